"""The report of one experiment: report.md, and report.html rendered from it with the PNGs embedded (mdhtml.py).

It is assembled from what `aggregate` and `plots` wrote (tables/, plots/) plus the config and each run's run.json,
so it shows nothing that is not in those files. Sections: what ran (config, engine versions, host/GPU), the
departures from the article's command line (where the config's `report.departures` lists them), flags, the
answer block (each arm against its baseline and the config's extra `analysis.compare` pairs, with intervals), the
decode efficiency, the kernels table, the article-format tables, the comparisons and the plots.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from attnbench import layout
from attnbench.analysis import aggregate, markdown, mdhtml, plots, runinfo, stats
from attnbench.analysis.reference import reference_section
from attnbench.measure import openloop, servermetrics

PLOT_CAPTIONS = {
    "throughput": "Generation and prompt throughput (tokens/s) vs concurrency per arm: mean over repeats, error bars "
    "± 1 sd over repeats.",
    "ttft": "TTFT (ms) vs concurrency: mean over repeats of each level's median (± 1 sd), band from min to max.",
    "speedup": "Throughput of each compared pair (ratio of means) with its 95% interval where 3 or more repeats carry "
    "one (hollow: no interval), and the article's ratio for the same claim (black, dashed).",
    "decode": "Decode speed (concurrency x 1000 / median TPOT) against the memory-bandwidth bound (weights / "
    "bandwidth per step), and as a share of it.",
    "kernels": "Kernel evidence: share of attention time by kernel family in prefill and decode, per arm (profiler "
    "probe, mean over runs).",
    "vs_published": "Ours / the article's published number per level (1 = reproduced), generation and prompt "
    "throughput.",
}
ANSWER_METRICS = [("generation_throughput_tps", "generation"), ("prompt_throughput_tps", "prompt")]


def _level_size(sweep: dict) -> str:
    """The default level size as the sweep computes it (sweep.requests_for), in words."""
    return f"max({sweep.get('waves_per_level', 4)}N, {sweep.get('min_requests_per_level', 16)})"


def _shift_headings(md: str, by: int) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + by) + " ", md, flags=re.M)


def _read_table(exp_dir: Path, name: str) -> str | None:
    path = layout.tables_dir(exp_dir) / name
    return path.read_text(encoding="utf-8") if path.exists() else None


def _embedded(exp_dir: Path, names: list[str], shift: int) -> list[str]:
    """The tables of `names` that exist and are not empty, their headings moved `shift` levels down."""
    texts = [_read_table(exp_dir, name) for name in names]
    return [_shift_headings(text, shift) for text in texts if text]


def what_ran(cfg: dict) -> str:
    eng, model, sweep = cfg["engine"], cfg["model"], cfg.get("sweep", {})
    lines = [
        "## What ran\n",
        f"- Engine: vLLM {eng['version']}, runtime `{eng['runtime']}`, device `{eng.get('device', 'n/a')}`"
        + (f", image `{eng['image']}`" if eng.get("image") else ""),
        f"- Model: `{model['name']}`"
        + (f" (synthetic, dummy weights, architecture `{model['architecture']}`)" if model.get("architecture") else "")
        + (f" (`{model['path']}`)" if model.get("path") else "")
        + f", dtype {model.get('dtype', 'auto')}, max_model_len {model.get('max_model_len', 'n/a')}"
        + (f", quantization {model['quantization']}" if model.get("quantization") else ""),
        f"- Sweep: api `{sweep.get('api', 'chat')}`, {sweep.get('repeats', 1)} repeat(s), "
        f"warm-up of at least {sweep.get('warmup_requests', 'n/a')} request(s) and "
        f"{sweep.get('warmup_seconds', 0):g} s "
        f"per level, then at least {sweep.get('requests_per_level') or _level_size(sweep)} requests and "
        f"{sweep.get('min_level_seconds', 0):g} s measured per level, ignore_eos {sweep.get('ignore_eos', 'n/a')}, "
        f"temperature {sweep.get('temperature', 'n/a')}",
        f"- Baseline arm: `{runinfo.baseline_of(cfg)}`",
        "",
        "Workloads:\n",
    ]
    wl_rows = [
        [name, str(w["prompt_tokens"]), str(w["output_tokens"]), ", ".join(str(c) for c in w["concurrency"])]
        for name, w in cfg["workloads"].items()
    ]
    lines.append(
        markdown.md_table(["Workload", "Prompt tokens", "Output tokens", "Concurrency"], wl_rows, right={1, 2})
    )
    lines.append("Arms:\n")
    arm_rows = []
    for arm in runinfo.arms_of(cfg):
        expect = arm.get("expect_kernels") or {}
        arm_rows.append(
            [
                arm["name"],
                arm.get("backend") or "(default)",
                str(arm.get("flash_attn_version") or "-"),
                arm.get("variant") or "-",
                arm.get("article_backend") or "-",
                ", ".join(f"{k} {'+'.join(v)}" for k, v in expect.items() if v) or "-",
                " ".join((arm.get("description") or "-").split()),
            ]
        )
    lines.append(
        markdown.md_table(
            ["Arm", "Backend", "FA version", "Variant", "Article backend", "Expect kernels", "Description"],
            arm_rows,
            right=set(),
        )
    )
    return "\n".join(lines)


def departures_section(cfg: dict) -> str:
    """The config's `report.departures` as a table ('' without any, so a report without them is unchanged)."""
    departures = (cfg.get("report") or {}).get("departures") or []
    if not departures:
        return ""
    rows = [[" ".join(d["what"].split()), " ".join(d["why"].split())] for d in departures]
    return (
        "## Departures from the article\n\nWhere this experiment's server command differs from the article's, and "
        "why (config `report.departures`).\n\n" + markdown.md_table(["What", "Why"], rows, right=set())
    )


def _gpu_telemetry(gpu: dict | None) -> list[str]:
    """run.json's `gpu` (gpumon.summarize) as report cells; runs without samples (CPU, older runs) say so."""
    if not gpu:
        return ["not sampled"] + ["-"] * 4

    def v(key: str) -> str:
        return "n/a" if gpu.get(key) is None else f"{gpu[key]:g}"

    return [
        gpu["gpu"],
        f"{v('sm_clock_mhz_median')} / {v('sm_clock_max_mhz')}",
        f"{v('power_w_median')} / {v('power_limit_w')}",
        v("temperature_c_max"),
        gpu["clock_event_reasons"],
    ]


def provenance(runs: list[runinfo.RunInfo]) -> str:
    rows = []
    for info in runs:
        run = info.run
        versions = (run.get("engine") or {}).get("versions") or {}
        host = run.get("host") or {}
        gpus = host.get("gpus") or []
        gpu = ", ".join(g.get("name", str(g)) if isinstance(g, dict) else str(g) for g in gpus) or "none"
        rows.append(
            [
                markdown.arm_label(info.arm, bool(info.flags)),
                str(info.repeat),
                info.status,
                " ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v) or "n/a",
                host.get("gpu_type") or "n/a",
                gpu,
                str(host.get("driver") or "n/a"),
                str(host.get("cpu") or "n/a"),
                str((run.get("server") or {}).get("ready_s", "n/a")),
                *_gpu_telemetry(run.get("gpu")),
            ]
        )
    commits = sorted(
        {
            f"{(r.run.get('git') or {}).get('commit') or 'unknown'}"
            + (" (dirty)" if (r.run.get("git") or {}).get("dirty") else "")
            for r in runs
        }
    )
    return f"## Runs and hosts\n\nCode: git {', '.join(commits) or 'unknown'}\n\n" + markdown.md_table(
        [
            "Arm",
            "Repeat",
            "Status",
            "Engine versions",
            "GPU type",
            "GPUs",
            "Driver",
            "CPU",
            "Server ready (s)",
            "GPU id",
            "SM clock MHz (busy median / max)",
            "Power W (busy median / limit)",
            "Max temp C",
            "Clock event reasons",
        ],
        rows,
        right={1},
    )


def _crosscheck_absolute(xc: dict) -> list[str]:
    """Each tool's own figures (crosscheck means), so a point can be read against numbers from elsewhere; crosschecks
    recorded before they were kept show n/a."""
    means, workload = xc.get("means"), xc.get("workload") or {}
    size = f"{workload['num_prompts']} x {xc['repeats']}" if workload and xc.get("repeats") else "n/a"
    if not means:
        return [size, "n/a", "n/a"]
    v, o = means["vllm"], means["ours"]
    return [
        size,
        f"{v['output_throughput_tps']:.1f} / {o['output_throughput_tps']:.1f}",
        f"{v['tpot_ms_median']:.3f} / {o['tpot_ms_median']:.3f}",
    ]


def crosscheck_section(runs: list[runinfo.RunInfo]) -> str:
    """vLLM's own benchmark client against ours on the same server (run-arm's crosscheck points), if any ran."""
    rows = [
        [
            info.arm,
            str(info.repeat),
            xc["point"],
            f"{xc['prompt_tokens']['vllm']:.0f} / {xc['prompt_tokens']['ours']:.0f}",
            f"{xc['output_throughput_ratio']:.4f}",
            f"{xc['ttft_ms_median_diff']:+.2f}",
            f"{xc['tpot_ms_median_diff']:+.3f}",
            f"{xc['noise_ours_throughput_rel'] * 100:.2f}% / {xc['noise_vllm_throughput_rel'] * 100:.2f}%",
            *_crosscheck_absolute(xc),
        ]
        for info in runs
        for xc in info.run.get("crosscheck") or []
    ]
    if not rows:
        return ""
    return (
        "## Cross-check with vLLM's own benchmark client\n\nBoth clients back to back on the arm's own server after "
        "its sweep (run folder crosscheck/). Ratio > 1: ours measured more output tokens/s; differences are ours - "
        "vLLM's. Noise is each tool's spread between its own repetitions (0 with one repetition: not measured).\n\n"
        + markdown.md_table(
            [
                "Arm",
                "Repeat",
                "Point",
                "Prompt tokens vLLM / ours",
                "Output tok/s ours/vLLM",
                "Median TTFT diff (ms)",
                "Median TPOT diff (ms)",
                "Noise ours / vLLM",
                "Requests x repetitions",
                "Output tok/s vLLM / ours",
                "Median TPOT ms vLLM / ours",
            ],
            rows,
            right={1, 4, 5, 6},
        )
    )


def _ratio_cell(c) -> str:
    """'1.026 [0.998, 1.055]', or the bare ratio where the repeats carry no interval (the verdict says why)."""
    if math.isnan(c.ratio):
        return "n/a"
    return f"{c.ratio:.3f}" if math.isnan(c.ci_low) else f"{c.ratio:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]"


def _verdict_word(c) -> str:
    """higher / lower when the repeats resolve the ratio, else the verdict with its reason ('n/a (2 repeats)')."""
    return ("higher" if c.ratio > 1 else "lower") if c.verdict == "resolved" else c.verdict


def _flags_cell(flags: dict[str, set[str]]) -> str:
    """The flag codes of a row; prefixed by the metric when they touch only one ('prompt: single_chunk')."""
    shared = set.intersection(*flags.values()) if flags else set()
    parts = sorted(shared) + [f"{word}: {c}" for word, codes in flags.items() for c in sorted(codes - shared)]
    return ", ".join(parts) or "-"


def _pair_summary(gen: pd.DataFrame) -> str:
    """One sentence per pair: range of generation ratios with their n, how many levels the repeats resolve, and the
    article's range for the same claim."""
    ns = sorted(set(zip(gen["arm_n"], gen["base_n"])))
    n_text = ", ".join(stats.repeats_text(a, b) for a, b in ns)
    resolved = gen[gen["verdict"] == "resolved"]
    text = (
        f"Generation throughput ratio {gen['ratio'].min():.3f} to {gen['ratio'].max():.3f} over {len(gen)} level(s) "
        f"({n_text} per level). "
    )
    if (gen[["arm_n", "base_n"]].min(axis=1) < stats.MIN_REPEATS_FOR_INTERVAL).all():
        text += f"With fewer than {stats.MIN_REPEATS_FOR_INTERVAL} repeats no level has an interval: not resolved. "
    else:
        up, down = int((resolved["ratio"] > 1).sum()), int((resolved["ratio"] < 1).sum())
        text += (
            f"Resolved at {len(resolved)} of {len(gen)} level(s) ({up} higher, {down} lower); the others are "
            "not resolved (interval spans 1, too few repeats, or a spread above "
            f"{100 * stats.NOISY_CV:.0f}%). "
        )
    if gen["flags"].astype(str).str.contains("machines").any():
        text += (
            "The two arms' repeats ran on different GPUs [machines]: these ratios include the difference between the "
            "machines, which the repeats of one arm on both (if any) show. "
        )
    pub = gen["published_ratio"].dropna()
    if not pub.empty:
        text += (
            f"The article published {gen['published_pair'].iloc[0]} = {pub.min():.3f} to {pub.max():.3f} at "
            "the same levels (one run each, no spread)."
        )
    return text + "\n"


def answer_block(exp_dir: Path, cfg: dict) -> str:
    """Each comparison pair per workload and level, from tables/comparisons.csv: the ratio with its interval (or why
    there is none), the number of repeats, the verdict and the ratio the article published for the same claim."""
    pairs = stats.comparison_pairs(cfg)
    if not pairs:
        return "## Answer\n\nOne arm only: no speedup to report.\n"
    comp = aggregate.read_comparisons(exp_dir)
    parts = [
        "## Answer: speedups\n",
        "Ratio = mean throughput of the arm / mean throughput of the other arm over repeats (n: repeats of arm / "
        f"other arm). Interval: {stats.INTERVAL_METHOD}. higher / lower: the repeats resolve the difference "
        f"(interval excludes 1, both sides' CV at most {100 * stats.NOISY_CV:.0f}%); otherwise not resolved, with "
        "the reason. Article: the ratio the article published for the same claim (its arm backends, "
        "config/reference/article_published.csv; one run per level). Flags: tables/flags.md.\n",
    ]
    for arm, base in pairs:
        parts.append(f"### {arm} over {base}\n")
        sub = comp[(comp["arm"] == arm) & (comp["baseline"] == base)]
        gen = sub[sub["metric"] == "generation_throughput_tps"].dropna(subset=["ratio"])
        if gen.empty:
            parts.append("No level measured by both arms.\n")
            continue
        parts.append(_pair_summary(gen))
        has_pub = bool(gen["published_pair"].iloc[0])
        cells = {(c.workload, c.concurrency, c.metric): c for c in sub.itertuples(index=False)}
        rows = []
        for workload in runinfo.workload_names(cfg):
            for conc in sorted({k[1] for k in cells if k[0] == workload}):
                row, flags, n = [workload, str(conc)], {}, "n/a"
                for m, word in ANSWER_METRICS:
                    c = cells.get((workload, conc, m))
                    if c is None:
                        row += ["n/a", "-"] + (["n/a"] if has_pub else [])
                        continue
                    n = n if n != "n/a" else f"{c.arm_n}/{c.base_n}"
                    row += [_ratio_cell(c), _verdict_word(c)] + (
                        [markdown.fmt(c.published_ratio, 3)] if has_pub else []
                    )
                    flags[word] = {f for f in c.flags.split("+") if f}
                row.insert(2, n)
                row[1] = markdown.arm_label(row[1], any("run" in f for f in flags.values()))
                rows.append(row + [_flags_cell(flags)])
        headers = ["Workload", "Concurrency", "n"]
        for _, word in ANSWER_METRICS:
            headers += [f"{word} ratio [95% CI]", f"{word} verdict"] + ([f"{word}: article"] if has_pub else [])
        parts.append(
            markdown.md_table(headers + ["flags"], rows, right={1, 2, 3, 5, 6, 8} if has_pub else {1, 2, 3, 5})
        )
    return "\n".join(parts)


def build_report_md(exp_dir: Path, cfg: dict) -> str:
    exp_dir = Path(exp_dir)
    runs = runinfo.load_runs(exp_dir, cfg)
    parts = [f"# attnbench report: {cfg['experiment']}\n"]
    if cfg.get("description"):
        parts.append(cfg["description"].strip() + "\n")
    parts.append(what_ran(cfg))
    departures = departures_section(cfg)
    if departures:  # only where the config lists some: reports made before the field existed stay as they were
        parts.append(departures)
    parts.append(provenance(runs))
    parts += _embedded(exp_dir, ["flags.md"], 1)
    missing = _read_table(exp_dir, "missing_runs.txt")
    if missing:
        parts.append("Runs the config names that hold no records yet: " + ", ".join(missing.split()) + "\n")
    parts.append(answer_block(exp_dir, cfg))
    for section in (
        crosscheck_section(runs),
        reference_section(exp_dir, cfg, runs),
        openloop.report_section(exp_dir),
        servermetrics.report_section(exp_dir),
    ):
        if section:
            parts.append(section)
    parts += _embedded(exp_dir, ["decode_efficiency.md", "kernels.md"], 1)
    parts.append("## Article-format tables\n\nOne per arm and workload, mean over repeats (tables/article_*.md).\n")
    articles = [f"article_{a['name']}_{w}.md" for a in runinfo.arms_of(cfg) for w in runinfo.workload_names(cfg)]
    parts += _embedded(exp_dir, articles, 2)
    parts += _embedded(exp_dir, ["arms_vs_baseline.md", "vs_published.md"], 1)
    parts.append("## Plots\n")
    for workload in runinfo.workload_names(cfg):
        for kind in plots.KINDS:
            png = Path(plots.PLOTS_DIR) / f"{kind}_{workload}.png"
            if (exp_dir / png).exists():
                parts.append(f"**{workload}: {PLOT_CAPTIONS[kind]}**\n\n![{kind} {workload}]({png.as_posix()})\n")
    for figure in plots.FIGURES:
        png = Path(plots.PLOTS_DIR) / f"{figure}.png"
        if (exp_dir / png).exists():
            parts.append(f"**{PLOT_CAPTIONS[figure]}**\n\n![{figure}]({png.as_posix()})\n")
    parts.append(
        "Raw records: runs/<arm>/rep<k>/records.jsonl and levels.jsonl; all numbers above are derived from them "
        "(tables/levels.csv has every level).\n"
    )
    return "\n".join(parts)


def write_report(exp_dir: Path, cfg: dict) -> list[Path]:
    exp_dir = Path(exp_dir)
    md = build_report_md(exp_dir, cfg)
    md_path, html_path = exp_dir / "report.md", exp_dir / "report.html"
    md_path.write_text(md, encoding="utf-8", newline="\n")
    html_path.write_text(mdhtml.md_to_html(md, exp_dir, f"attnbench report: {cfg['experiment']}"), encoding="utf-8")
    return [md_path, html_path]


def register(subparsers) -> None:
    about = "write report.md and report.html of one experiment (after aggregate and plots)"
    aggregate.experiment_parser(subparsers, "report", about).set_defaults(func=aggregate.print_written(write_report))
