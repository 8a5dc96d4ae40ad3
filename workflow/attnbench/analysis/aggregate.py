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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.engines import kernels as kernels_mod
from attnbench.errors import AttnbenchError
from attnbench.measure import metrics
from attnbench.measure.lag import lag_reason
from attnbench.measure.records import RecordError
from attnbench.paths import PACKAGE_DIR, REPO_ROOT

TABLES_DIR = "tables"
# Version of the tables' text. 2 (issue 13): intervals valid for the repeats, flagged artifacts, comparisons.csv.
TABLES_FORMAT = 2
FORMAT_FILE = "tables_format.txt"
PUBLISHED_CSV = REPO_ROOT / "config" / "reference" / "article_published.csv"
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
        if "client_lagged" in df:  # a level where our client lagged is flagged like a contradicted kernel (lag.py)
            lagged = df["client_lagged"].astype(bool)
            df.loc[lagged, "flag_reason"] = [
                "; ".join(x for x in (reason, lag_reason(row)) if x)
                for reason, row in zip(df.loc[lagged, "flag_reason"], df.loc[lagged].to_dict("records"))
            ]
            df["flagged"] = df["flagged"] | lagged
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
        "requested_backend",
        "flash_attn_version",
        "article_backend",
        "logged_backend",
        "backend_match",
        "run_status",
        "kernel_families",
        "kernel_phases",
        "expectation",
        "flagged",
        "flag_reason",
    ]
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
#
# A repeat is one server run, so the unit of replication is the run: every spread and interval here is over repeats,
# never over the requests inside one (those share a server, a warm-up and a moment of machine load).

MIN_REPEATS_FOR_INTERVAL = 3  # below this a t interval is so wide (t = 12.7 at 1 df) that quoting it misleads
NOISY_CV = 0.10  # a side whose repeats spread more than this does not resolve a ratio, whatever its interval says
# Student's t, two-sided 95% (0.975 quantile), by degrees of freedom; beyond 30 the 1.96 + 2.4/df approximation is
# within 0.002 of the exact value, and Welch's fractional df are rounded down (the wider, safer interval).
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
INTERVAL_METHOD = (
    "95% Welch t interval of the log ratio over repeats (delta method: the variance of log(mean) is CV^2/n per "
    f"side; repeats of two arms are separate runs, not pairs); n/a below {MIN_REPEATS_FOR_INTERVAL} repeats on "
    "either side"
)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def _std(vals: list[float]) -> float:
    if len(vals) < 2:
        return float("nan")
    m = _mean(vals)
    return math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def t975(df: float) -> float:
    k = max(int(math.floor(df)), 1)
    return _T975[k - 1] if k <= len(_T975) else 1.96 + 2.4 / k


@dataclass(frozen=True)
class Spread:
    """One quantity over repeats: mean, sample sd, coefficient of variation (sd / mean) and how many repeats define
    it (a repeat whose value is undefined, NaN, does not count)."""

    mean: float
    sd: float
    cv: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vals = [float(v) for v in values if pd.notna(v)]
        if not vals:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        m, sd = _mean(vals), _std(vals)
        return cls(m, sd, sd / m if m and not math.isnan(sd) else float("nan"), len(vals))


def log_ratio_interval(a: Spread, b: Spread) -> tuple[float, float] | None:
    """95% interval of mean(a) / mean(b): Welch's t on the log scale, with Var(log mean) ~ CV^2 / n per side.
    None below MIN_REPEATS_FOR_INTERVAL repeats on either side, or for a non-positive mean (no log)."""
    if min(a.n, b.n) < MIN_REPEATS_FOR_INTERVAL or not (a.mean > 0 and b.mean > 0):
        return None
    ratio = a.mean / b.mean
    va, vb = a.cv**2 / a.n, b.cv**2 / b.n
    if va + vb == 0:
        return ratio, ratio
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = t975(df) * math.sqrt(va + vb)
    return ratio * math.exp(-half), ratio * math.exp(half)


def ratio_interval(arm_values: list[float], base_values: list[float], *, key: str) -> tuple[float, float] | None:
    """The percentile bootstrap of tables format 1 (tables_v1), kept only for compare.py, which still calls it;
    the tables use log_ratio_interval."""
    from attnbench.analysis import tables_v1  # noqa: PLC0415  (it imports this module)

    return tables_v1.ratio_interval(arm_values, base_values, key=key)


def verdict(a: Spread, b: Spread, interval: tuple[float, float] | None) -> str:
    """Whether the repeats resolve the ratio: 'n/a (2 repeats)', 'not resolved (...)', or 'resolved'."""
    if min(a.n, b.n) < MIN_REPEATS_FOR_INTERVAL:
        return f"n/a ({repeats_text(a.n, b.n)})"
    if interval is None:
        return "n/a (no positive mean)"
    cv = max(a.cv, b.cv)
    if cv > NOISY_CV:
        return f"not resolved (CV {100 * cv:.0f}% > {100 * NOISY_CV:.0f}%)"
    if interval[0] <= 1.0 <= interval[1]:
        return "not resolved (interval spans 1)"
    return "resolved"


def repeats_text(n_arm: int, n_base: int) -> str:
    n = min(n_arm, n_base)
    return f"{n} repeat{'s' if n != 1 else ''}" if n_arm == n_base else f"{n_arm}/{n_base} repeats"


def level_flags(rows: pd.DataFrame, metric: str) -> list[str]:
    """Why the cells of one metric at one level may not measure what they say: flagged runs (run failed, kernels
    contradict the arm) and the level artifacts (metrics.ARTIFACTS) that touch this metric, codes sorted."""
    codes = set()
    if "flagged" in rows and rows["flagged"].astype(bool).any():
        codes.add("run")
    for text in rows.get("artifacts", pd.Series(dtype=object)):
        for code in metrics.artifact_codes(text if isinstance(text, str) else ""):
            touched = metrics.ARTIFACT_METRICS.get(code)
            if touched is None or metric in touched:
                codes.add(code)
    return sorted(codes)


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


COMPARISON_COLUMNS = [
    "arm",
    "baseline",
    "workload",
    "concurrency",
    "metric",
    "arm_mean",
    "arm_sd",
    "arm_cv",
    "arm_n",
    "base_mean",
    "base_sd",
    "base_cv",
    "base_n",
    "ratio",
    "ci_low",
    "ci_high",
    "verdict",
    "flags",
    "published_pair",
    "published_ratio",
]


# The article's claim: FLASH_ATTN (FA2) over XFORMERS, which it took for "without FA2" (article_published.csv).
ARTICLE_CLAIM = ("FLASH_ATTN", "XFORMERS")


def published_pair(cfg: dict, arm: str, base: str) -> tuple[str, str] | None:
    """The article's counterpart of a pair: (arm's article_backend, baseline's article_backend) when both have one.
    An arm standing for the article's FLASH_ATTN against a baseline the article did not run (xformers forced to
    cutlass, the true no-FA2 baseline) tests the article's own claim, so it gets the article's FLASH_ATTN / XFORMERS."""
    arms = {a["name"]: a for a in arms_of(cfg)}
    mine, theirs = arms[arm].get("article_backend"), arms[base].get("article_backend")
    if mine and theirs and mine != theirs:
        return mine, theirs
    if mine == ARTICLE_CLAIM[0] and not theirs:
        return ARTICLE_CLAIM
    return None


def _published_value(published: pd.DataFrame, backend: str, workload: str, conc: int, metric: str) -> float:
    if metric not in published:
        return float("nan")
    hit = published[
        (published["backend"] == backend) & (published["workload"] == workload) & (published["concurrency"] == conc)
    ]
    return float(hit.iloc[0][metric]) if not hit.empty else float("nan")


def comparisons_frame(df: pd.DataFrame, cfg: dict, published: pd.DataFrame) -> pd.DataFrame:
    """Every comparison of the experiment, computed once (tables/comparisons.csv; report and plots read it): each
    pair, workload, shared level and COMPARED_METRICS metric, with both sides' spread over repeats, the ratio of
    means, its interval (INTERVAL_METHOD), the verdict, the flags of either side and the article's ratio."""
    rows = []
    for arm, base in comparison_pairs(cfg):
        pub = published_pair(cfg, arm, base)
        for workload in workload_names(cfg):
            a_wl = df[(df["arm"] == arm) & (df["workload"] == workload)]
            b_wl = df[(df["arm"] == base) & (df["workload"] == workload)]
            for conc in sorted(set(a_wl["concurrency"]) & set(b_wl["concurrency"])):
                a_rows, b_rows = a_wl[a_wl["concurrency"] == conc], b_wl[b_wl["concurrency"] == conc]
                for metric, _, _ in COMPARED_METRICS:
                    if metric not in df:
                        continue
                    a, b = Spread.of(a_rows[metric]), Spread.of(b_rows[metric])
                    ratio = a.mean / b.mean if a.n and b.n and b.mean else float("nan")
                    interval = log_ratio_interval(a, b)
                    pub_ratio = float("nan")
                    if pub:
                        pub_ratio = _published_value(published, pub[0], workload, conc, metric) / _published_value(
                            published, pub[1], workload, conc, metric
                        )
                    rows.append(
                        [
                            arm,
                            base,
                            workload,
                            int(conc),
                            metric,
                            a.mean,
                            a.sd,
                            a.cv,
                            a.n,
                            b.mean,
                            b.sd,
                            b.cv,
                            b.n,
                            ratio,
                            interval[0] if interval else float("nan"),
                            interval[1] if interval else float("nan"),
                            verdict(a, b, interval),
                            "+".join(sorted(set(level_flags(a_rows, metric)) | set(level_flags(b_rows, metric)))),
                            f"{pub[0]}/{pub[1]}" if pub else "",
                            pub_ratio,
                        ]
                    )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def summary_frame(df: pd.DataFrame, metrics_: list[str]) -> pd.DataFrame:
    """Mean, sample std, CV and count over repeats per (arm, workload, concurrency), keeping config order; `flagged`
    when a run of the level is flagged, `<metric>_flags` the level_flags codes of each metric."""
    rows = []
    for (arm, workload, conc), g in df.groupby(["arm", "workload", "concurrency"], sort=False):
        row = {"arm": arm, "workload": workload, "concurrency": int(conc), "flagged": bool(g["flagged"].any())}
        for m in metrics_:
            s = Spread.of(g[m]) if m in g else Spread.of([])
            row.update(
                {
                    f"{m}_mean": s.mean,
                    f"{m}_std": s.sd,
                    f"{m}_cv": s.cv,
                    f"{m}_n": s.n,
                    f"{m}_flags": "+".join(level_flags(g, m)),
                }
            )
        rows.append(row)
    columns = ["arm", "workload", "concurrency", "flagged"] + [
        f"{m}_{s}" for m in metrics_ for s in ("mean", "std", "cv", "n", "flags")
    ]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------------------------
# Markdown


def fmt(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def fmt_cell(value: Any, decimals: int, flags: str = "") -> str:
    """A number with the codes of what touches it: '0.007 [single_chunk]', 'n/a [prompt_formula]'."""
    text = fmt(value, decimals)
    return f"{text} [{flags.replace('+', ', ')}]" if isinstance(flags, str) and flags else text


def fmt_interval(lo: float, hi: float, n_arm: int, n_base: int) -> str:
    """'[0.964, 1.031]', or 'n/a (2 repeats)' where the repeats do not carry an interval."""
    if min(n_arm, n_base) < MIN_REPEATS_FOR_INTERVAL or math.isnan(lo):
        return f"n/a ({repeats_text(n_arm, n_base)})"
    return f"[{lo:.3f}, {hi:.3f}]"


def fmt_spread(mean: float, sd: float, cv: float, decimals: int) -> str:
    """'752.26 ± 3.10 (0.4%)': mean ± sample sd (CV) over repeats; the sd is n/a with one repeat."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(sd):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f} ({100 * cv:.1f}%)"


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


FLAG_WORDS = {
    "run": "a run of the level is flagged (did not finish, or its kernels contradict its arm)",
    **metrics.ARTIFACTS,
}


def flag_legend(codes: Iterable[str]) -> str:
    """One line naming what each code in a table means ('' when none appears)."""
    codes = sorted({c for text in codes for c in str(text).split("+") if c})
    return "Flags: " + "; ".join(f"[{c}] {FLAG_WORDS.get(c, c)}" for c in codes) + ".\n" if codes else ""


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
        f"Latency: {fmt(_mean(latency) if latency else None, 2)} ms",
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


def read_published(path: Path | None = None) -> pd.DataFrame:
    """The article's numbers: from the checkout this package lives in, else from the working directory (a
    non-editable install run from a checkout)."""
    candidates = (
        [path]
        if path
        else [
            PUBLISHED_CSV,
            Path.cwd() / "config" / "reference" / PUBLISHED_CSV.name,
            PACKAGE_DIR / "reference" / PUBLISHED_CSV.name,
        ]
    )  # package data
    for candidate in candidates:
        if candidate.exists():
            return pd.read_csv(candidate)
    raise AggregateError(f"published reference table is missing (looked for {', '.join(map(str, candidates))})")


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
            theirs = {m: _published_value(published, backend, s["workload"], s["concurrency"], m) for m in cols}
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


# --------------------------------------------------------------------------------------------------------------
# Entry points


def build_tables(exp_dir: Path, cfg: dict, *, tables_format: int | None = None) -> dict[str, str]:
    """File name -> exact text of every table of the experiment (same inputs, same bytes). tables_format None: the
    format the folder's tables were written in (tables_format_of), so that `attnbench verify` recomputes an older
    bundle's tables as they were made."""
    exp_dir = Path(exp_dir)
    if (tables_format or tables_format_of(exp_dir)) == 1:
        from attnbench.analysis import tables_v1  # noqa: PLC0415  (it imports this module)

        return tables_v1.build_tables(exp_dir, cfg)
    df = levels_frame(exp_dir, cfg)
    runs = load_runs(exp_dir, cfg)
    published = read_published()
    tables = {FORMAT_FILE: f"{TABLES_FORMAT}\n", "levels.csv": levels_csv(df)}
    for arm in arms_of(cfg):
        for workload in workload_names(cfg):
            text = article_table(df, cfg, arm, workload)
            if text is not None:
                tables[f"article_{arm['name']}_{workload}.md"] = text
    comp = comparisons_frame(df, cfg, published)
    tables["comparisons.csv"] = _csv(comp)
    tables["arms_vs_baseline.md"] = arms_vs_baseline(comp, cfg)
    vp = vs_published_frame(df, cfg, published)
    tables["vs_published.md"] = vs_published_md(vp)
    tables["vs_published.csv"] = _csv(vp)
    tables["flags.md"] = flags_md(df, runs)
    tables["kernels.md"] = kernels_md(runs, cfg)
    tables["kernel_shares.csv"] = _csv(kernel_shares_frame(runs))
    tables["decode_efficiency.md"] = decode_efficiency_md(df, cfg)
    missing = missing_runs(exp_dir, cfg)
    if missing:
        tables["missing_runs.txt"] = "".join(f"{m}\n" for m in missing)
    return tables


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


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


def read_comparisons(exp_dir: Path) -> pd.DataFrame:
    """tables/comparisons.csv as written by `aggregate` (the report and the plots read the comparisons from it)."""
    path = tables_dir(exp_dir) / "comparisons.csv"
    if not path.exists():
        raise AggregateError(f"{path} is missing: run `attnbench aggregate {exp_dir} --config CFG` first")
    df = pd.read_csv(path, dtype={"flags": str, "verdict": str, "published_pair": str})
    for col in ("flags", "published_pair"):
        df[col] = df[col].fillna("")
    return df


def read_levels_csv(exp_dir: Path) -> pd.DataFrame:
    """The tidy table as written by `aggregate` (plots and report start from it)."""
    path = tables_dir(exp_dir) / "levels.csv"
    if not path.exists():
        raise AggregateError(f"{path} is missing: run `attnbench aggregate {exp_dir} --config CFG` first")
    text_cols = [
        "artifacts",
        "flag_reason",
        "kernel_families",
        "kernel_phases",
        "logged_backend",
        "requested_backend",
        "article_backend",
        "expectation",
        "run_status",
        "flash_attn_version",
        "backend_match",
    ]
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
