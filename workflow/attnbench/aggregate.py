"""Tables of one experiment, built from the raw run folders only.

`build_tables` returns every table as exact text, so that `attnbench verify` can recompute them from the raw records
of a bundle and compare bytes. Everything here is therefore deterministic: rows are ordered by the config (arms,
workloads) and numbers, floats are written with fixed formats, the bootstrap uses its own seeded generator, and no
table holds a time stamp or a path. levels.parquet is written from the same frame as levels.csv, but Parquet bytes
depend on the pyarrow version, so only the CSV is meant for byte comparison.

Tables (results/<exp>/tables/):
  levels.csv / levels.parquet   one tidy row per (arm, repeat, workload, concurrency): metrics + arm metadata + flags
  article_<arm>_<workload>.md   the article's table (llmapibenchmark's columns), mean over repeats
  arms_vs_baseline.md           each arm next to the baseline (and any `analysis.compare` pairs), ratio + 95% CI
  vs_published.md / .csv        our numbers next to config/reference/article_published.csv
  kernels.md                    requested backend | backend the log named | kernel families seen, per run
  decode_efficiency.md          median TPOT at concurrency 1 against the memory-bandwidth bound
"""

from __future__ import annotations

import argparse
import json
import math
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from attnbench import kernels as kernels_mod
from attnbench import metrics
from attnbench.errors import AttnbenchError
from attnbench.records import RecordError

TABLES_DIR = "tables"
# Version of the tables' text. 2 (issue 13): intervals valid for the repeats, flagged artifacts, comparisons.csv.
TABLES_FORMAT = 2
FORMAT_FILE = "tables_format.txt"
PUBLISHED_CSV = Path(__file__).resolve().parents[2] / "config" / "reference" / "article_published.csv"
FLOAT_FORMAT = "%.6g"  # CSV: 6 significant digits hide last-bit differences between numpy/pandas builds
FLAG_MARK = "(!)"  # appended to the arm name of a flagged run in every markdown table
KEYS = ["experiment", "arm", "repeat", "workload", "concurrency"]

# The article's columns: (metric column, header, decimals). Names are llmapibenchmark's.
ARTICLE_COLUMNS = [
    ("generation_throughput_tps", "Generation Throughput (tokens/s)", 2),
    ("prompt_throughput_tps", "Prompt Throughput (tokens/s)", 2),
    ("min_ttft_s", "Min TTFT (s)", 2),
    ("max_ttft_s", "Max TTFT (s)", 2),
]
# Metrics compared arm against baseline: (column, label, decimals). Ratio is always arm / baseline, so >1 means
# faster for throughputs and slower for latencies.
COMPARED_METRICS = [
    ("generation_throughput_tps", "Generation throughput (tok/s)", 2),
    ("prompt_throughput_tps", "Prompt throughput (tok/s)", 2),
    ("ttft_ms_median", "Median TTFT (ms)", 2),
    ("tpot_ms_median", "Median TPOT (ms)", 3),
]
BOOTSTRAP_RESAMPLES = 2000


class AggregateError(AttnbenchError):
    pass


# --------------------------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class RunInfo:
    """One run folder (arm, repeat) and what it says about itself besides its measurements."""

    arm: str
    repeat: int
    run_dir: Path
    run: dict  # run.json ({} while the run has not finished)
    kernels: dict | None  # kernels.json (None when no probe ran)
    flags: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.run.get("status") or "unfinished"

    @property
    def logged_backend(self) -> str | None:
        return (self.run.get("backend") or {}).get("logged")

    @property
    def backend_match(self) -> bool | None:
        return (self.run.get("backend") or {}).get("match")


def arms_of(cfg: dict) -> list[dict]:
    return list(cfg["arms"])


def baseline_of(cfg: dict) -> str:
    return cfg.get("baseline") or cfg["arms"][0]["name"]


def workload_names(cfg: dict) -> list[str]:
    return list(cfg["workloads"])


def run_dir(exp_dir: Path, arm: str, repeat: int) -> Path:
    return Path(exp_dir) / "runs" / arm / f"rep{repeat}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AggregateError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def kernel_violations(kernels: dict | None, arm: dict) -> list[str]:
    """The arm's kernel expectation checked against a run's attribution (kernels.py owns the policy)."""
    expect = arm.get("expect_kernels") or {}
    if kernels is None or not (expect.get("require") or expect.get("forbid")):
        return []
    return list(kernels_mod.check_expectations(kernels, expect))


def has_raw_records(rdir: Path) -> bool:
    """Both raw files exist (a run killed before its first level finished has requests but no level yet)."""
    return (rdir / "records.jsonl").exists() and (rdir / "levels.jsonl").exists()


def load_runs(exp_dir: Path, cfg: dict) -> list[RunInfo]:
    """Every run folder the config names that holds raw records, in config order (arm, then repeat)."""
    runs = []
    for arm in arms_of(cfg):
        for repeat in range(int(cfg.get("sweep", {}).get("repeats", 1))):
            rdir = run_dir(exp_dir, arm["name"], repeat)
            if not has_raw_records(rdir):
                continue
            run = _read_json(rdir / "run.json") if (rdir / "run.json").exists() else {}
            kern = _read_json(rdir / "kernels.json") if (rdir / "kernels.json").exists() else None
            info = RunInfo(arm["name"], repeat, rdir, run, kern)
            if info.status != "ok":
                info.flags.append(f"run {info.status}" + (f": {run['error']}" if run.get("error") else ""))
            info.flags.extend(f"kernels: {v}" for v in kernel_violations(kern, arm))
            runs.append(info)
    return runs


def missing_runs(exp_dir: Path, cfg: dict) -> list[str]:
    return [
        f"{arm['name']}/rep{k}"
        for arm in arms_of(cfg)
        for k in range(int(cfg.get("sweep", {}).get("repeats", 1)))
        if not has_raw_records(run_dir(exp_dir, arm["name"], k))
    ]


# --------------------------------------------------------------------------------------------------------------
# Kernel summaries


def families_summary(families: dict | None) -> str:
    """'fa3 91.2%, paged_attention 8.8%': attention families by their share of attention time (kernels.json's
    `attention_share`), largest first, name breaking ties. Without attention shares (an older or hand-written
    attribution) every family is listed with its share of all time."""
    if not families:
        return ""
    entries = {name: v if isinstance(v, dict) else {"share": v} for name, v in families.items()}
    if any("attention_share" in v for v in entries.values()):
        items = [(n, v.get("attention_share")) for n, v in entries.items() if v.get("attention_share") is not None]
    else:
        items = [(n, v.get("share")) for n, v in entries.items()]
    items.sort(key=lambda kv: (-(kv[1] or 0.0), kv[0]))
    return ", ".join(name if share is None else f"{name} {100 * share:.1f}%" for name, share in items)


def phases_summary(phases: Any) -> str:
    """'prefill: pytorch_flash 100.0%; decode: paged_attention 100.0%' from kernels.json's phase split (phases
    without attention kernels, such as idle time, are left out)."""
    if not isinstance(phases, dict) or not phases:
        return ""
    parts = []
    for phase in sorted(phases, key=lambda p: (p != "prefill", p != "decode", p)):
        body = phases[phase]
        if isinstance(body, dict) and isinstance(body.get("families"), dict):
            body = body["families"]
        text = families_summary(body) if isinstance(body, dict) else ""
        if text:
            parts.append(f"{phase}: {text}")
    return "; ".join(parts)


def attention_share_text(kernels: dict | None) -> str:
    share = (kernels or {}).get("attention_share")
    return f"{100 * share:.1f}%" if isinstance(share, (int, float)) else "n/a"


# --------------------------------------------------------------------------------------------------------------
# The tidy frame


def levels_frame(exp_dir: Path, cfg: dict) -> pd.DataFrame:
    """All levels of all runs with arm metadata, flags and the decode-efficiency columns, in config order."""
    arms = {a["name"]: a for a in arms_of(cfg)}
    frames = []
    for info in load_runs(exp_dir, cfg):
        try:
            df = metrics.read_run(info.run_dir)
        except RecordError as exc:  # a damaged raw file: name it, do not guess around it
            raise AggregateError(f"raw records unreadable: {exc}") from None
        if df.empty:
            continue
        arm = arms[info.arm]
        kern = info.kernels or {}
        # Metadata as text, so the CSV reads the same whatever dtype pandas would infer from a mix of None and ints.
        meta = {
            "requested_backend": arm.get("backend") or "",
            "flash_attn_version": _text(arm.get("flash_attn_version")),
            "article_backend": arm.get("article_backend") or "",
            "logged_backend": info.logged_backend or "",
            "backend_match": _text(info.backend_match),
            "run_status": info.status,
            "kernel_families": families_summary(kern.get("families")),
            "kernel_phases": phases_summary(kern.get("phases")),
            "expectation": _expectation_word(info, arm),
            "flagged": bool(info.flags),
            "flag_reason": "; ".join(info.flags),
        }
        for key, value in meta.items():
            df[key] = value
        frames.append(df)
    if not frames:
        raise AggregateError(
            f"{exp_dir}: no run holds raw records (looked for runs/<arm>/rep<k>/records.jsonl and levels.jsonl "
            "for the config's arms)"
        )
    df = pd.concat(frames, ignore_index=True)
    df = _add_decode_efficiency(df, cfg)
    return order_frame(df, cfg)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _expectation_word(info: RunInfo, arm: dict) -> str:
    expect = arm.get("expect_kernels") or {}
    if not (expect.get("require") or expect.get("forbid")):
        return "none"
    if info.kernels is None:
        return "unchecked"
    return "violated" if any(f.startswith("kernels:") for f in info.flags) else "ok"


def decode_bound_ms(cfg: dict) -> float | None:
    """Memory-bandwidth bound of one decode step: weight bytes / HBM bandwidth (GB / (TB/s) = ms)."""
    analysis = cfg.get("analysis") or {}
    gb, tbs = analysis.get("weights_gb"), analysis.get("bandwidth_tb_s")
    if not gb or not tbs:
        return None
    return float(gb) / float(tbs)


def _add_decode_efficiency(df: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    bound = decode_bound_ms(cfg)
    at_one = df["concurrency"] == 1
    df["decode_bound_ms"] = float("nan")
    df["decode_efficiency_pct"] = float("nan")
    if bound is not None and "tpot_ms_median" in df:
        df.loc[at_one, "decode_bound_ms"] = bound
        df.loc[at_one, "decode_efficiency_pct"] = 100.0 * bound / df.loc[at_one, "tpot_ms_median"]
    return df


def order_frame(df: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Rows in config order (arm, repeat, workload, concurrency); key and metadata columns first."""
    arm_rank = {a["name"]: i for i, a in enumerate(arms_of(cfg))}
    wl_rank = {w: i for i, w in enumerate(workload_names(cfg))}
    df = df.assign(
        _a=df["arm"].map(arm_rank).fillna(len(arm_rank)), _w=df["workload"].map(wl_rank).fillna(len(wl_rank))
    )
    df = df.sort_values(["_a", "repeat", "_w", "workload", "concurrency"], kind="mergesort")
    df = df.drop(columns=["_a", "_w"]).reset_index(drop=True)
    meta = [
        "requested_backend", "flash_attn_version", "article_backend", "logged_backend", "backend_match",
        "run_status", "kernel_families", "kernel_phases", "expectation", "flagged", "flag_reason",
    ]  # fmt: skip
    first = [c for c in KEYS + meta if c in df]
    return df[first + [c for c in df.columns if c not in first]]


def levels_csv(df: pd.DataFrame) -> str:
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: "" if v is None else v)
    return out.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


# --------------------------------------------------------------------------------------------------------------
# Statistics across repeats


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), written out so the result cannot drift."""
    if not sorted_values:
        raise ValueError("percentile of nothing")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def ratio_interval(
    arm_values: list[float], base_values: list[float], *, key: str, resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float] | None:  # fmt: skip
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


def comparison_pairs(cfg: dict) -> list[tuple[str, str]]:
    """Each arm against the baseline, then the extra pairs of `analysis.compare` (e.g. FLASH_ATTN vs XFORMERS)."""
    base = baseline_of(cfg)
    pairs = [(a["name"], base) for a in arms_of(cfg) if a["name"] != base]
    names = {a["name"] for a in arms_of(cfg)}
    for extra in (cfg.get("analysis") or {}).get("compare") or []:
        pair = (extra["arm"], extra["baseline"])
        unknown = [n for n in pair if n not in names]
        if unknown:
            raise AggregateError(
                f"analysis.compare: {', '.join(unknown)} is not an arm; allowed values: {', '.join(sorted(names))}"
            )
        if pair not in pairs:
            pairs.append(pair)
    return pairs


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
                    arm, baseline, workload, int(conc), metric, am, bm, len(av), len(bv),
                    am / bm if bm else float("nan"), ratio_interval(av, bv, key=key),
                    bool(a["flagged"].any() or b["flagged"].any()),
                )  # fmt: skip
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
    columns = ["arm", "workload", "concurrency", "flagged"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")]
    return pd.DataFrame(rows, columns=columns)


def _std(vals: list[float]) -> float:
    if len(vals) < 2:
        return float("nan")
    m = _mean(vals)
    return math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


# --------------------------------------------------------------------------------------------------------------
# Markdown


def fmt(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def fmt_ratio(ratio: float, interval: tuple[float, float] | None) -> str:
    if math.isnan(ratio):
        return "n/a"
    ci = "n/a" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{ratio:.3f} {ci}"


def md_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A padded pipe table (the look of llmapibenchmark's output); columns in `right` are right-aligned."""
    right = set(range(len(headers))) if right is None else right
    # A '|' inside a cell (free text: descriptions, error reasons) would split it; '/' reads the same.
    headers = [h.replace("|", "/") for h in headers]
    rows = [[c.replace("|", "/") for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths))
    return "\n".join([line(headers), rule + "|"] + [line(r) for r in rows]) + "\n"


def arm_label(arm: str, flagged: bool) -> str:
    return f"{arm} {FLAG_MARK}" if flagged else arm


def article_table(df: pd.DataFrame, cfg: dict, arm: dict, workload: str) -> str | None:
    sub = df[(df["arm"] == arm["name"]) & (df["workload"] == workload)]
    if sub.empty:
        return None
    wl = cfg["workloads"][workload]
    metrics = [c for c, _, _ in ARTICLE_COLUMNS]
    summ = summary_frame(sub, metrics)
    repeats = sorted(set(sub["repeat"]))
    flagged = bool(sub["flagged"].any())
    latency = [float(v) for v in sub.get("latency_ms", pd.Series(dtype=float)) if pd.notna(v)]
    head = [
        f"# {arm_label(arm['name'], flagged)} / {workload}",
        "",
        f"Backend: {arm.get('backend') or 'engine default'}",
        f"Input Tokens: {wl['prompt_tokens']}",
        f"Output Tokens: {wl['output_tokens']}",
        f"Test Model: {cfg['model']['name']}",
        f"Latency: {fmt(_mean(latency) if latency else None, 2)} ms",
        f"Repeats: {len(repeats)} (mean over repeats)",
    ]
    if flagged:
        reasons = sorted(set(r for r in sub["flag_reason"] if r))
        head.append(f"{FLAG_MARK} FLAGGED: {'; '.join(reasons)}")
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
                        [arm_label(str(c.concurrency), c.flagged), label, fmt(c.base_mean, d), fmt(c.arm_mean, d),
                         fmt_ratio(c.ratio, c.interval), f"{c.n_arm}/{c.n_base}"]  # fmt: skip
                    )
            if not rows:
                continue
            # Group by concurrency, metrics in COMPARED_METRICS order (stable sort keeps it).
            rows.sort(key=lambda r: int(r[0].split()[0]))
            parts.append(f"## {arm} vs {base} / {workload}\n")
            headers = ["Concurrency", "Metric", base, arm, "ratio [95% CI]", "n (arm/base)"]
            parts.append(md_table(headers, rows, right={0, 2, 3, 4, 5}))
    return "\n".join(parts)


def read_published(path: Path | None = None) -> pd.DataFrame:
    """The article's numbers: from the checkout this package lives in, else from the working directory (a
    non-editable install run from a checkout)."""
    candidates = [path] if path else [PUBLISHED_CSV, Path.cwd() / "config" / "reference" / PUBLISHED_CSV.name]
    for candidate in candidates:
        if candidate.exists():
            return pd.read_csv(candidate)
    raise AggregateError(f"published reference table is missing (looked for {', '.join(map(str, candidates))})")


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
                "arm": arm["name"], "article_backend": backend, "workload": s["workload"],
                "concurrency": int(s["concurrency"]), "repeats": int(s[f"{metrics[0]}_n"]),
                "flagged": bool(s["flagged"]),
            }  # fmt: skip
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


def kernels_md(runs: list[RunInfo], cfg: dict) -> str:
    arms = {a["name"]: a for a in arms_of(cfg)}
    parts = [
        "# Attention kernels per run\n",
        "Requested backend (config), the backend the server log named, and the kernel families the profiler probe "
        "saw with their share of attention time (GPU kernel time, or CPU op time on the CPU engine), the attention share "
        "of all time, and the split into prefill and decode where the trace allowed one. "
        f"{FLAG_MARK} marks a run whose kernels contradict its arm's expectation or that did not finish.\n",
    ]
    headers = ["Arm", "Repeat", "Requested backend", "Logged backend", "Kernel families (share)",
               "Attention share of time", "Prefill / decode", "Expectation", "Flags"]  # fmt: skip
    rows = []
    for info in runs:
        arm = arms[info.arm]
        kern = info.kernels or {}
        expect = arm.get("expect_kernels") or {}
        exp_text = ", ".join(
            f"{word} {'+'.join(expect[word])}" for word in ("require", "forbid") if expect.get(word)
        )
        rows.append(
            [
                arm_label(info.arm, bool(info.flags)),
                str(info.repeat),
                arm.get("backend") or "(default)",
                info.logged_backend or ("not logged" if info.run.get("backend") else "n/a"),
                families_summary(kern.get("families")) or ("no probe" if info.kernels is None else "none seen"),
                attention_share_text(info.kernels),
                phases_summary(kern.get("phases")) or "n/a",
                f"{exp_text}: {_expectation_word(info, arm)}" if exp_text else "none",
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
            [arm_label(s["arm"], s["flagged"]), s["workload"], fmt(tpot, 3), fmt(bound, 3), fmt(eff, 1),
             str(s["tpot_ms_median_n"])]  # fmt: skip
        )
    return head + md_table(["Arm", "Workload", "Median TPOT (ms)", "bound_ms", "efficiency %", "repeats"], rows,
                           right={2, 3, 4, 5})  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Entry points


def build_tables(exp_dir: Path, cfg: dict, *, tables_format: int | None = None) -> dict[str, str]:
    """File name -> exact text of every table of the experiment (same inputs, same bytes). tables_format None: the
    format the folder's tables were written in (tables_format_of), so that `attnbench verify` recomputes an older
    bundle's tables as they were made."""
    exp_dir = Path(exp_dir)
    if (tables_format or tables_format_of(exp_dir)) == 1:
        from attnbench import tables_v1  # noqa: PLC0415  (it imports this module)

        return tables_v1.build_tables(exp_dir, cfg)
    df = levels_frame(exp_dir, cfg)
    runs = load_runs(exp_dir, cfg)
    tables = {FORMAT_FILE: f"{TABLES_FORMAT}\n", "levels.csv": levels_csv(df)}
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


def tables_dir(exp_dir: Path) -> Path:
    return Path(exp_dir) / TABLES_DIR


def tables_format_of(exp_dir: Path) -> int:
    """The format of the tables already in the folder: its tables_format.txt, 1 where tables exist without one
    (written before formats were numbered), the current format where there are none yet."""
    marker = tables_dir(exp_dir) / FORMAT_FILE
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        if not text.isdigit():
            raise AggregateError(f"{marker}: expected a format number, found {text[:40]!r}")
        return int(text)
    return 1 if (tables_dir(exp_dir) / "levels.csv").is_file() else TABLES_FORMAT


def write_tables(exp_dir: Path, cfg: dict) -> list[Path]:
    exp_dir = Path(exp_dir)
    out = tables_dir(exp_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in build_tables(exp_dir, cfg, tables_format=TABLES_FORMAT).items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    # Parquet from the very CSV text, so both files hold the same rounded numbers.
    import io

    frame = pd.read_csv(io.StringIO((out / "levels.csv").read_text(encoding="utf-8")))
    parquet = out / "levels.parquet"
    frame.to_parquet(parquet, index=False)
    written.append(parquet)
    stale = out / "missing_runs.txt"
    if stale.exists() and stale not in written:
        stale.unlink()
    return written


def read_levels_csv(exp_dir: Path) -> pd.DataFrame:
    """The tidy table as written by `aggregate` (plots and report start from it)."""
    path = tables_dir(exp_dir) / "levels.csv"
    if not path.exists():
        raise AggregateError(f"{path} is missing: run `attnbench aggregate {exp_dir} --config CFG` first")
    text_cols = ["flag_reason", "kernel_families", "kernel_phases", "logged_backend", "requested_backend",
                 "article_backend", "expectation", "run_status", "flash_attn_version", "backend_match"]  # fmt: skip
    df = pd.read_csv(path, dtype={c: str for c in text_cols})
    for col in text_cols:
        if col in df:
            df[col] = df[col].fillna("")
    return df


def load_cfg(path: str) -> dict:
    from attnbench.config import load_config

    return load_config(path)


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_cfg(args.config)
    for path in write_tables(Path(args.exp_dir), cfg):
        print(path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("aggregate", help="build the tables of one experiment from its raw run folders")
    p.add_argument("exp_dir", metavar="EXP_DIR", help="results/<experiment>")
    p.add_argument("--config", required=True, help="the experiment's config YAML")
    p.set_defaults(func=_cmd)
