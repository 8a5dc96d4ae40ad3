"""Tables format 1: how `aggregate` wrote tables before format 2 (issue 13), kept so that bundles made then still
verify byte for byte. The pieces format 2 left unchanged (levels_frame, kernels_md, decode_efficiency_md, md_table,
...) are imported from aggregate; a change there that alters format-1 text must first copy the old version here.
Do not edit: a change here breaks the verification of every bundle of format 1, such as
results/published/h100-vllm0.26 (tests/unit/test_published.py guards it).

Format 1 quotes a percentile bootstrap over repeats (meaningless with two repeats) and drops levels whose metric is
undefined without saying so; format 2 (aggregate.py) replaced both. A bundle's tables folder without
`tables_format.txt` is format 1.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnbench.analysis.markdown import FLAG_MARK, arm_label, fmt, md_table
from attnbench.analysis.runinfo import arms_of, load_runs, missing_runs, workload_names
from attnbench.analysis.stats import COMPARED_METRICS, comparison_pairs, read_published
from attnbench.analysis.stats import mean_of as _mean
from attnbench.analysis.stats import sample_sd as _std
from attnbench.analysis.tabletext import ARTICLE_COLUMNS, article_head, decode_efficiency_md, flagged_line, kernels_md
from attnbench.analysis.tidy import FLOAT_FORMAT, levels_csv, levels_frame

BOOTSTRAP_RESAMPLES = 2000
# Columns format 2 added to levels.csv; format 1 did not have them.
ADDED_COLUMNS = ("artifacts", "single_chunk_streams")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), written out so the result cannot drift."""
    if not sorted_values:
        raise ValueError("percentile of nothing")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def build_tables(exp_dir: Path, cfg: dict) -> dict[str, str]:
    """File name -> exact text of every table, as format 1 wrote them."""
    exp_dir = Path(exp_dir)
    df = levels_frame(exp_dir, cfg)
    df = df.drop(columns=[c for c in ADDED_COLUMNS if c in df])
    runs = load_runs(exp_dir, cfg)
    tables = {"levels.csv": levels_csv(df)}
    for arm in arms_of(cfg):
        for workload in workload_names(cfg):
            text = article_table(df, cfg, arm, workload)
            if text is not None:
                tables[f"article_{arm['name']}_{workload}.md"] = text
    tables["arms_vs_baseline.md"] = arms_vs_baseline(df, cfg)
    vp = vs_published_frame(df, cfg, read_published())
    tables["vs_published.md"] = vs_published_md(vp)
    tables["vs_published.csv"] = vp.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    tables["kernels.md"] = kernels_md(runs, cfg)
    tables["decode_efficiency.md"] = decode_efficiency_md(df, cfg)
    missing = missing_runs(exp_dir, cfg)
    if missing:
        tables["missing_runs.txt"] = "".join(f"{m}\n" for m in missing)
    return tables


def ratio_interval(
    arm_values: list[float],
    base_values: list[float],
    *,
    key: str,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mean(arm)/mean(baseline), resampling the repeats of each side on its own.

    Repeats of two arms are independent runs (not paired), hence separate resampling. The generator is seeded from
    `key` with CRC32 and uses only random.random(), whose stream Python keeps stable across versions. None when a
    side has fewer than two repeats (no spread to resample)."""
    arm_values = [v for v in arm_values if not math.isnan(v)]
    base_values = [v for v in base_values if not math.isnan(v)]
    if len(arm_values) < 2 or len(base_values) < 2:
        return None
    rng = random.Random(zlib.crc32(key.encode("utf-8")))

    def resampled_mean(values: list[float]) -> float:
        n = len(values)
        return math.fsum(values[int(rng.random() * n)] for _ in range(n)) / n

    ratios = []
    for _ in range(resamples):
        a, b = resampled_mean(arm_values), resampled_mean(base_values)
        if b > 0:
            ratios.append(a / b)
    if not ratios:
        return None
    ratios.sort()
    tail = (1.0 - level) / 2.0
    return percentile(ratios, tail), percentile(ratios, 1.0 - tail)


@dataclass
class Comparison:
    arm: str
    baseline: str
    workload: str
    concurrency: int
    metric: str
    arm_mean: float
    base_mean: float
    n_arm: int
    n_base: int
    ratio: float
    interval: tuple[float, float] | None
    flagged: bool


def compare_arms(
    df: pd.DataFrame, cfg: dict, arm: str, baseline: str, metric: str, workload: str | None = None
) -> list[Comparison]:
    """arm against baseline for one metric, per workload (all, or the one given) and shared concurrency."""
    seed = (cfg.get("analysis") or {}).get("seed", 0)
    out = []
    if metric not in df:
        return out
    for workload in [workload] if workload else workload_names(cfg):
        a_wl = df[(df["arm"] == arm) & (df["workload"] == workload)]
        b_wl = df[(df["arm"] == baseline) & (df["workload"] == workload)]
        for conc in sorted(set(a_wl["concurrency"]) & set(b_wl["concurrency"])):
            a = a_wl[a_wl["concurrency"] == conc]
            b = b_wl[b_wl["concurrency"] == conc]
            av = [float(v) for v in a[metric] if pd.notna(v)]
            bv = [float(v) for v in b[metric] if pd.notna(v)]
            if not av or not bv:
                continue
            am, bm = _mean(av), _mean(bv)
            key = f"{seed}|{arm}|{baseline}|{workload}|{conc}|{metric}"
            out.append(
                Comparison(
                    arm,
                    baseline,
                    workload,
                    int(conc),
                    metric,
                    am,
                    bm,
                    len(av),
                    len(bv),
                    am / bm if bm else float("nan"),
                    ratio_interval(av, bv, key=key),
                    bool(a["flagged"].any() or b["flagged"].any()),
                )
            )
    return out


def summary_frame(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean, sample std and count over repeats per (arm, workload, concurrency), keeping config order."""
    rows = []
    for (arm, workload, conc), g in df.groupby(["arm", "workload", "concurrency"], sort=False):
        row = {"arm": arm, "workload": workload, "concurrency": int(conc), "flagged": bool(g["flagged"].any())}
        for m in metrics:
            vals = [float(v) for v in g[m] if pd.notna(v)] if m in g else []
            row[f"{m}_mean"] = _mean(vals) if vals else float("nan")
            row[f"{m}_std"] = _std(vals)
            row[f"{m}_n"] = len(vals)
        rows.append(row)
    columns = ["arm", "workload", "concurrency", "flagged"] + [
        f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")
    ]
    return pd.DataFrame(rows, columns=columns)


def fmt_ratio(ratio: float, interval: tuple[float, float] | None) -> str:
    if math.isnan(ratio):
        return "n/a"
    ci = "n/a" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{ratio:.3f} {ci}"


def article_table(df: pd.DataFrame, cfg: dict, arm: dict, workload: str) -> str | None:
    sub = df[(df["arm"] == arm["name"]) & (df["workload"] == workload)]
    if sub.empty:
        return None
    metrics = [c for c, _, _ in ARTICLE_COLUMNS]
    summ = summary_frame(sub, metrics)
    head = article_head(sub, cfg, arm, workload) + [f"Repeats: {len(set(sub['repeat']))} (mean over repeats)"]
    head += flagged_line(sub)
    headers = ["Concurrency"] + [h for _, h, _ in ARTICLE_COLUMNS]
    rows = [
        [str(r["concurrency"])] + [fmt(r[f"{c}_mean"], d) for c, _, d in ARTICLE_COLUMNS] for _, r in summ.iterrows()
    ]
    return "\n".join(head) + "\n\n" + md_table(headers, rows)


def arms_vs_baseline(df: pd.DataFrame, cfg: dict) -> str:
    parts = [
        "# Arms compared\n",
        "Ratio = mean(arm) / mean(baseline) over repeats; [95% CI] is a percentile bootstrap over repeats "
        f"({BOOTSTRAP_RESAMPLES} resamples, seeded), n/a with fewer than two repeats on either side. Ratios above 1 "
        f"mean higher throughput or longer latency. {FLAG_MARK} marks levels with a flagged run.\n",
    ]
    pairs = comparison_pairs(cfg)
    if not pairs:
        parts.append("Only one arm: nothing to compare.\n")
    for arm, base in pairs:
        for workload in workload_names(cfg):
            rows = []
            for metric, label, d in COMPARED_METRICS:
                for c in compare_arms(df, cfg, arm, base, metric, workload):
                    rows.append(
                        [
                            arm_label(str(c.concurrency), c.flagged),
                            label,
                            fmt(c.base_mean, d),
                            fmt(c.arm_mean, d),
                            fmt_ratio(c.ratio, c.interval),
                            f"{c.n_arm}/{c.n_base}",
                        ]
                    )
            if not rows:
                continue
            # Group by concurrency, metrics in COMPARED_METRICS order (stable sort keeps it).
            rows.sort(key=lambda r: int(r[0].split()[0]))
            parts.append(f"## {arm} vs {base} / {workload}\n")
            headers = ["Concurrency", "Metric", base, arm, "ratio [95% CI]", "n (arm/base)"]
            parts.append(md_table(headers, rows, right={0, 2, 3, 4, 5}))
    return "\n".join(parts)


def vs_published_frame(df: pd.DataFrame, cfg: dict, published: pd.DataFrame) -> pd.DataFrame:
    """Our mean per level next to the article's number, for arms that name their `article_backend`."""
    metrics = [c for c, _, _ in ARTICLE_COLUMNS]
    rows = []
    for arm in arms_of(cfg):
        backend = arm.get("article_backend")
        if not backend:
            continue
        summ = summary_frame(df[df["arm"] == arm["name"]], metrics + ["latency_ms"])
        for _, s in summ.iterrows():
            pub = published[
                (published["backend"] == backend)
                & (published["workload"] == s["workload"])
                & (published["concurrency"] == s["concurrency"])
            ]
            if pub.empty:
                continue
            p = pub.iloc[0]
            row = {
                "arm": arm["name"],
                "article_backend": backend,
                "workload": s["workload"],
                "concurrency": int(s["concurrency"]),
                "repeats": int(s[f"{metrics[0]}_n"]),
                "flagged": bool(s["flagged"]),
            }
            for m in metrics:
                ours, theirs = s[f"{m}_mean"], float(p[m])
                row[f"{m}_ours"] = ours
                row[f"{m}_published"] = theirs
                row[f"{m}_ratio"] = ours / theirs if theirs else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def vs_published_md(vp: pd.DataFrame) -> str:
    head = (
        "# Ours vs the article's published numbers\n\n"
        "Article: vLLM 0.7.1, RTX 3070 Laptop, llmapibenchmark, one run per level. Ours: mean over repeats. "
        f"Ratio = ours / published. {FLAG_MARK} marks a level with a flagged run.\n"
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
        headers = ["Concurrency"]
        for m, label in short.items():
            headers += [f"{label} ours", f"{label} article", "ratio"]
        rows = []
        for _, r in g.iterrows():
            row = [arm_label(str(r["concurrency"]), r["flagged"])]
            for m, _, d in ARTICLE_COLUMNS:
                row += [fmt(r[f"{m}_ours"], d), fmt(r[f"{m}_published"], d), fmt(r[f"{m}_ratio"], 3)]
            rows.append(row)
        parts.append(md_table(headers, rows))
    return "\n".join(parts)
