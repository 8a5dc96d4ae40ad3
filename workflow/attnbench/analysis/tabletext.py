"""The tables of one experiment as text: the article's table per arm and workload, the arms compared, ours against
the published numbers, the flags, the kernels and the decode efficiency. Each takes what aggregate computed once
(the tidy frame, the runs, the comparisons) and returns exact text."""

from __future__ import annotations

import math

import pandas as pd

from attnbench.analysis.markdown import (
    FLAG_MARK,
    arm_label,
    flag_legend,
    fmt,
    fmt_cell,
    fmt_interval,
    fmt_spread,
    md_table,
)
from attnbench.analysis.runinfo import (
    RunInfo,
    arms_of,
    attention_share_text,
    expectation_word,
    families_summary,
    phases_summary,
    workload_names,
)
from attnbench.analysis.stats import (
    COMPARED_METRICS,
    INTERVAL_METHOD,
    NOISY_CV,
    comparison_pairs,
    mean_of,
    published_value,
    summary_frame,
)
from attnbench.analysis.tidy import decode_bound_ms

# The article's columns: (metric column, header, decimals). Names are llmapibenchmark's.
ARTICLE_COLUMNS = [
    ("generation_throughput_tps", "Generation Throughput (tokens/s)", 2),
    ("prompt_throughput_tps", "Prompt Throughput (tokens/s)", 2),
    ("min_ttft_s", "Min TTFT (s)", 2),
    ("max_ttft_s", "Max TTFT (s)", 2),
]


def article_head(sub: pd.DataFrame, cfg: dict, arm: dict, workload: str) -> list[str]:
    """The article table's title and llmapibenchmark's header lines, down to its Latency line."""
    wl = cfg["workloads"][workload]
    latency = [float(v) for v in sub.get("latency_ms", pd.Series(dtype=float)) if pd.notna(v)]
    return [
        f"# {arm_label(arm['name'], bool(sub['flagged'].any()))} / {workload}",
        "",
        f"Backend: {arm.get('backend') or 'engine default'}",
        f"Input Tokens: {wl['prompt_tokens']}",
        f"Output Tokens: {wl['output_tokens']}",
        f"Test Model: {cfg['model']['name']}",
        f"Latency: {fmt(mean_of(latency) if latency else None, 2)} ms",
    ]


def flagged_line(sub: pd.DataFrame) -> list[str]:
    """'(!) FLAGGED: <reasons>' when a run of these rows is flagged."""
    if not bool(sub["flagged"].any()):
        return []
    return [f"{FLAG_MARK} FLAGGED: {'; '.join(sorted(set(r for r in sub['flag_reason'] if r)))}"]


def article_table(df: pd.DataFrame, cfg: dict, arm: dict, workload: str) -> str | None:
    sub = df[(df["arm"] == arm["name"]) & (df["workload"] == workload)]
    if sub.empty:
        return None
    cols = [c for c, _, _ in ARTICLE_COLUMNS]
    summ = summary_frame(sub, cols)
    head = (
        article_head(sub, cfg, arm, workload)
        + [
            f"Repeats: {len(set(sub['repeat']))}. Each cell is the mean over the repeats where it is defined ('(n=k)' "
            "when fewer than the level's runs); CV is the generation throughput's sd / mean over repeats; TTFT in "
            "seconds, as in the article.",
        ]
        + flagged_line(sub)
    )
    headers = ["Concurrency"] + [h for _, h, _ in ARTICLE_COLUMNS] + ["Repeats", "Generation CV"]
    rows, codes = [], []
    for (_, r), runs in zip(summ.iterrows(), sub.groupby("concurrency", sort=False).size()):
        cells = [str(r["concurrency"])]
        for c, _, d in ARTICLE_COLUMNS:
            cell = fmt_cell(r[f"{c}_mean"], d, r[f"{c}_flags"])
            cells.append(cell + (f" (n={r[f'{c}_n']})" if r[f"{c}_n"] < runs else ""))
            codes.append(r[f"{c}_flags"])
        cv = r["generation_throughput_tps_cv"]
        cells += [str(runs), "n/a" if math.isnan(cv) else f"{100 * cv:.1f}%"]
        rows.append(cells)
    return "\n".join(head) + "\n\n" + md_table(headers, rows) + flag_legend(codes)


def comparison_rows(comp: pd.DataFrame, arm: str, base: str, workload: str) -> pd.DataFrame:
    return comp[(comp["arm"] == arm) & (comp["baseline"] == base) & (comp["workload"] == workload)]


def arms_vs_baseline(comp: pd.DataFrame, cfg: dict) -> str:
    parts = [
        "# Arms compared\n",
        "Ratio = mean(arm) / mean(baseline) over repeats; above 1 means higher throughput or longer latency. "
        f"Interval: {INTERVAL_METHOD}. Verdict: resolved when the interval excludes 1 and neither side's CV exceeds "
        f"{100 * NOISY_CV:.0f}%. Each side: mean ± sample sd (CV) over repeats.\n",
    ]
    if not comparison_pairs(cfg):
        parts.append("Only one arm: nothing to compare.\n")
    elif comp.empty:
        parts.append("No level measured by both arms of a pair: nothing to compare yet.\n")
    labels = {m: (label, d) for m, label, d in COMPARED_METRICS}
    for arm, base in comparison_pairs(cfg):
        for workload in workload_names(cfg):
            sub = comparison_rows(comp, arm, base, workload)
            if sub.empty:
                continue
            rows = []
            for c in sub.itertuples(index=False):
                label, d = labels[c.metric]
                rows.append(
                    [
                        arm_label(str(c.concurrency), "run" in c.flags.split("+")),
                        label,
                        fmt_spread(c.base_mean, c.base_sd, c.base_cv, d),
                        fmt_spread(c.arm_mean, c.arm_sd, c.arm_cv, d),
                        f"{c.arm_n}/{c.base_n}",
                        fmt(c.ratio, 3),
                        fmt_interval(c.ci_low, c.ci_high, c.arm_n, c.base_n),
                        c.verdict,
                        c.flags.replace("+", ", ") or "-",
                    ]
                )
            parts.append(f"## {arm} vs {base} / {workload}\n")
            headers = ["Concurrency", "Metric", base, arm, "n (arm/base)", "ratio", "95% CI", "verdict", "flags"]
            parts.append(md_table(headers, rows, right={0, 2, 3, 4, 5, 6}) + flag_legend(sub["flags"]))
    return "\n".join(parts)


VS_PUBLISHED_COLUMNS = ["arm", "article_backend", "workload", "concurrency", "repeats", "flagged", "flags"] + [
    f"{m}_{side}" for m, _, _ in ARTICLE_COLUMNS for side in ("ours", "published", "ratio")
]


def vs_published_frame(df: pd.DataFrame, cfg: dict, published: pd.DataFrame) -> pd.DataFrame:
    """Our mean per level next to the article's number, for arms that name their `article_backend`; the columns are
    fixed, so the CSV has its header even when no arm has a published counterpart."""
    cols = [c for c, _, _ in ARTICLE_COLUMNS]
    rows = []
    for arm in arms_of(cfg):
        backend = arm.get("article_backend")
        if not backend:
            continue
        summ = summary_frame(df[df["arm"] == arm["name"]], cols)
        for _, s in summ.iterrows():
            theirs = {m: published_value(published, backend, s["workload"], s["concurrency"], m) for m in cols}
            if all(math.isnan(v) for v in theirs.values()):
                continue
            flags = sorted({c for m in cols for c in str(s[f"{m}_flags"]).split("+") if c})
            row = [
                arm["name"],
                backend,
                s["workload"],
                int(s["concurrency"]),
                int(
                    df[
                        (df["arm"] == arm["name"])
                        & (df["workload"] == s["workload"])
                        & (df["concurrency"] == s["concurrency"])
                    ]["repeat"].nunique()
                ),
                bool(s["flagged"]),
                "+".join(flags),
            ]
            for m in cols:
                row += [s[f"{m}_mean"], theirs[m], s[f"{m}_mean"] / theirs[m] if theirs[m] else float("nan")]
            rows.append(row)
    return pd.DataFrame(rows, columns=VS_PUBLISHED_COLUMNS)


def vs_published_md(vp: pd.DataFrame) -> str:
    head = (
        "# Ours vs the article's published numbers\n\n"
        "Article: vLLM 0.7.1, RTX 3070 Laptop, llmapibenchmark, one run per level (no spread published). Ours: mean "
        "over `repeats` runs. Ratio = ours / published. TTFT in seconds, as in the article.\n"
    )
    if vp.empty:
        return head + "\nNo arm names an `article_backend` with matching workload and concurrency.\n"
    short = {
        "generation_throughput_tps": "Gen tok/s",
        "prompt_throughput_tps": "Prompt tok/s",
        "min_ttft_s": "Min TTFT s",
        "max_ttft_s": "Max TTFT s",
    }
    parts = [head]
    for (arm, workload), g in vp.groupby(["arm", "workload"], sort=False):
        parts.append(f"## {arm} ({g['article_backend'].iloc[0]}) / {workload}\n")
        headers = ["Concurrency", "Repeats"]
        for label in short.values():
            headers += [f"{label} ours", f"{label} article", "ratio"]
        rows = []
        for _, r in g.iterrows():
            row = [arm_label(str(r["concurrency"]), r["flagged"]), str(r["repeats"])]
            for m, _, d in ARTICLE_COLUMNS:
                row += [
                    fmt_cell(r[f"{m}_ours"], d, r["flags"] if m == "prompt_throughput_tps" else ""),
                    fmt(r[f"{m}_published"], d),
                    fmt(r[f"{m}_ratio"], 3),
                ]
            rows.append(row)
        parts.append(md_table(headers, rows) + flag_legend(g["flags"]))
    return "\n".join(parts)


def flags_md(df: pd.DataFrame, runs: list[RunInfo]) -> str:
    """Every flag of the experiment, one line each: flagged runs, then each level where a definition breaks
    (metrics.ARTIFACTS), with a count per class. Nothing is dropped: the flagged numbers stay in every table."""
    parts = ["# Flags\n"]
    run_rows = [[r.arm, str(r.repeat), "; ".join(r.flags)] for r in runs if r.flags]
    parts.append(
        md_table(["Arm", "Repeat", "Why the run is flagged"], run_rows, right={1})
        if run_rows
        else "No run is flagged: every run finished and no kernel expectation was contradicted.\n"
    )
    level_rows, counts = [], {}
    for r in df.itertuples(index=False):
        text = getattr(r, "artifacts", "")
        for part in text.split("; ") if isinstance(text, str) and text else []:
            code, _, detail = part.partition(": ")
            counts[code] = counts.get(code, 0) + 1
            level_rows.append([r.arm, str(r.repeat), r.workload, str(r.concurrency), code, detail])
    if not level_rows:
        parts.append("No level artifact: every metric's definition held at every level.\n")
        return "\n".join(parts)
    parts.append(
        "Levels where a metric's definition breaks (the numbers stay in every table, marked with the code): "
        + ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))
        + ".\n"
    )
    parts.append(
        md_table(["Arm", "Repeat", "Workload", "Concurrency", "Flag", "Detail"], level_rows, right={1, 3})
        + flag_legend(counts)
    )
    return "\n".join(parts)


KERNEL_SHARE_COLUMNS = ["arm", "repeat", "phase", "family", "attention_share", "time_us"]
KERNEL_PHASES = ("prefill", "decode")


def kernel_shares_frame(runs: list[RunInfo]) -> pd.DataFrame:
    """Share of attention time by kernel family, per run and phase (prefill, decode, and 'all' for the whole probe)
    from kernels.json (kernels.attribute): the data of the kernel-evidence figure."""
    rows = []
    for info in runs:
        kern = info.kernels or {}
        sources = [("all", kern.get("families"))]
        sources += [(p, ((kern.get("phases") or {}).get(p) or {}).get("families")) for p in KERNEL_PHASES]
        for phase, families in sources:
            for family, v in sorted((families or {}).items()):
                if isinstance(v, dict) and v.get("attention_share") is not None:
                    rows.append(
                        [
                            info.arm,
                            info.repeat,
                            phase,
                            family,
                            float(v["attention_share"]),
                            float(v.get("time_us") or 0.0),
                        ]
                    )
    return pd.DataFrame(rows, columns=KERNEL_SHARE_COLUMNS)


def kernels_md(runs: list[RunInfo], cfg: dict) -> str:
    arms = {a["name"]: a for a in arms_of(cfg)}
    parts = [
        "# Attention kernels per run\n",
        "Requested backend (config), the backend the server log named, and the kernel families the profiler probe "
        "saw with their share of attention time (GPU kernel time, or CPU op time on the CPU engine), "
        "the attention share "
        "of all time, and the split into prefill and decode where the trace allowed one. "
        f"{FLAG_MARK} marks a run whose kernels contradict its arm's expectation or that did not finish.\n",
    ]
    headers = [
        "Arm",
        "Repeat",
        "Requested backend",
        "Logged backend",
        "Kernel families (share)",
        "Attention share of time",
        "Prefill / decode",
        "Expectation",
        "Flags",
    ]
    rows = []
    for info in runs:
        arm = arms[info.arm]
        kern = info.kernels or {}
        expect = arm.get("expect_kernels") or {}
        exp_text = ", ".join(f"{word} {'+'.join(expect[word])}" for word in ("require", "forbid") if expect.get(word))
        rows.append(
            [
                arm_label(info.arm, bool(info.flags)),
                str(info.repeat),
                arm.get("backend") or "(default)",
                info.logged_backend or ("not logged" if info.run.get("backend") else "n/a"),
                families_summary(kern.get("families")) or ("no probe" if info.kernels is None else "none seen"),
                attention_share_text(info.kernels),
                phases_summary(kern.get("phases")) or "n/a",
                f"{exp_text}: {expectation_word(info, arm)}" if exp_text else "none",
                "; ".join(info.flags) or "-",
            ]
        )
    parts.append(md_table(headers, rows, right={1, 5}))
    return "\n".join(parts)


def decode_efficiency_md(df: pd.DataFrame, cfg: dict) -> str:
    analysis = cfg.get("analysis") or {}
    bound = decode_bound_ms(cfg)
    head = "# Decode efficiency at concurrency 1\n\n"
    if bound is None:
        return head + (
            "No bound: set `analysis: {weights_gb: ..., bandwidth_tb_s: ...}` in the config (weight bytes read per "
            "decode step and the memory bandwidth) to compare the measured TPOT with the bandwidth bound.\n"
        )
    head += (
        f"Bound = weights {analysis['weights_gb']} GB / bandwidth {analysis['bandwidth_tb_s']} TB/s = {bound:.3f} ms "
        "per output token. Efficiency = bound / measured median TPOT (mean over repeats).\n\n"
    )
    rows = []
    one = df[df["concurrency"] == 1]
    summ = summary_frame(one, ["tpot_ms_median"])
    for _, s in summ.iterrows():
        tpot = s["tpot_ms_median_mean"]
        eff = 100.0 * bound / tpot if tpot and not math.isnan(tpot) else float("nan")
        rows.append(
            [
                arm_label(s["arm"], s["flagged"]),
                s["workload"],
                fmt(tpot, 3),
                fmt(bound, 3),
                fmt(eff, 1),
                str(s["tpot_ms_median_n"]),
            ]
        )
    return head + md_table(
        ["Arm", "Workload", "Median TPOT (ms)", "bound_ms", "efficiency %", "repeats"], rows, right={2, 3, 4, 5}
    )
