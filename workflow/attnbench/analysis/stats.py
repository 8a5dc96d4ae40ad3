"""Statistics across repeats, and the comparisons of an experiment's arms built from them (tables/comparisons.csv).

This is the package's one implementation of spread and of the ratio interval: aggregate's tables, the report and the
plots read comparisons.csv, and `attnbench compare` calls the same functions for bundles from peers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnbench.analysis.runinfo import AggregateError, arms_of, baseline_of, workload_names
from attnbench.measure import metrics
from attnbench.paths import PACKAGE_DIR, REPO_ROOT

PUBLISHED_CSV = REPO_ROOT / "config" / "reference" / "article_published.csv"
# Metrics compared arm against baseline: (column, label, decimals). Ratio is always arm / baseline, so >1 means
# faster for throughputs and slower for latencies.
COMPARED_METRICS = [
    ("generation_throughput_tps", "Generation throughput (tok/s)", 2),
    ("prompt_throughput_tps", "Prompt throughput (tok/s)", 2),
    ("ttft_ms_median", "Median TTFT (ms)", 2),
    ("tpot_ms_median", "Median TPOT (ms)", 3),
]

# A repeat is one server run, so the unit of replication is the run: every spread and interval here is over repeats,
# never over the requests inside one (those share a server, a warm-up and a moment of machine load).

MIN_REPEATS_FOR_INTERVAL = 3  # below this a t interval is so wide (t = 12.7 at 1 df) that quoting it misleads
NOISY_CV = 0.10  # a side whose repeats spread more than this does not resolve a ratio, whatever its interval says
# Student's t, two-sided 95% (0.975 quantile), by degrees of freedom; beyond 30 the 1.96 + 2.4/df approximation is
# within 0.002 of the exact value, and Welch's fractional df are rounded down (the wider, safer interval).
_T975 = tuple(
    float(v)
    for v in (
        "12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 2.131 "
        "2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 2.045 2.042"
    ).split()
)
INTERVAL_METHOD = (
    "95% Welch t interval of the log ratio over repeats (delta method: the variance of log(mean) is CV^2/n per "
    f"side; repeats of two arms are separate runs, not pairs); n/a below {MIN_REPEATS_FOR_INTERVAL} repeats on "
    "either side"
)


def mean_of(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def sample_sd(vals: list[float]) -> float:
    if len(vals) < 2:
        return float("nan")
    m = mean_of(vals)
    return math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def t975(df: float) -> float:
    k = max(int(math.floor(df)), 1)
    return _T975[k - 1] if k <= len(_T975) else 1.96 + 2.4 / k


@dataclass(frozen=True)
class Spread:
    """One quantity over repeats: mean, sample sd, coefficient of variation (sd / mean) and how many repeats define
    it (a repeat whose value is undefined, NaN, does not count). `exact`: a number quoted without spread (the
    article's published figure, one run): it adds no variance to an interval and needs no repeats of its own."""

    mean: float
    sd: float
    cv: float
    n: int
    exact: bool = False

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vals = [float(v) for v in values if pd.notna(v)]
        if not vals:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        m, sd = mean_of(vals), sample_sd(vals)
        return cls(m, sd, sd / m if m and not math.isnan(sd) else float("nan"), len(vals))

    @classmethod
    def quoted(cls, value: float) -> Spread:
        return cls(float(value), 0.0, 0.0, 1, exact=True)


def _too_few(a: Spread, b: Spread) -> bool:
    return any(s.n < MIN_REPEATS_FOR_INTERVAL for s in (a, b) if not s.exact)


def log_ratio_interval(a: Spread, b: Spread) -> tuple[float, float] | None:
    """95% interval of mean(a) / mean(b): Welch's t on the log scale, with Var(log mean) ~ CV^2 / n per side (an
    exact side adds none). None below MIN_REPEATS_FOR_INTERVAL repeats on a measured side, or for a non-positive
    mean (no log)."""
    if _too_few(a, b) or not (a.mean > 0 and b.mean > 0):
        return None
    ratio = a.mean / b.mean
    sides = [(s.cv**2 / s.n, s.n) for s in (a, b) if not s.exact]
    var = sum(v for v, _ in sides)
    if var == 0:
        return ratio, ratio
    df = var**2 / sum(v**2 / (n - 1) for v, n in sides)
    half = t975(df) * math.sqrt(var)
    return ratio * math.exp(-half), ratio * math.exp(half)


def verdict(a: Spread, b: Spread, interval: tuple[float, float] | None) -> str:
    """Whether the repeats resolve the ratio: 'n/a (2 repeats)', 'not resolved (...)', or 'resolved'."""
    if _too_few(a, b):
        ns = [s.n for s in (a, b) if not s.exact]
        return f"n/a ({repeats_text(a.n, b.n) if len(ns) == 2 else repeats_text(ns[0], ns[0])})"
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


def published_value(published: pd.DataFrame, backend: str, workload: str, conc: int, metric: str) -> float:
    if metric not in published:
        return float("nan")
    hit = published[
        (published["backend"] == backend) & (published["workload"] == workload) & (published["concurrency"] == conc)
    ]
    return float(hit.iloc[0][metric]) if not hit.empty else float("nan")


def machines_differ(cards: Mapping[tuple[str, int], str | None], arm: str, a_reps, base: str, b_reps) -> bool:
    """True when both sides name their GPUs and the repeats ran on different cards or in different proportions
    (arm on A, A, A against baseline on A, A, B): the ratio then includes the machines' own difference."""
    a = sorted(str(cards.get((arm, int(r)))) for r in a_reps)
    b = sorted(str(cards.get((base, int(r)))) for r in b_reps)
    return "None" not in a + b and a != b


def comparisons_frame(
    df: pd.DataFrame, cfg: dict, published: pd.DataFrame, cards: Mapping[tuple[str, int], str | None] | None = None
) -> pd.DataFrame:
    """Every comparison of the experiment, computed once (tables/comparisons.csv; report and plots read it): each
    pair, workload, shared level and COMPARED_METRICS metric, with both sides' spread over repeats, the ratio of
    means, its interval (INTERVAL_METHOD), the verdict, the flags of either side and the article's ratio. `cards`:
    (arm, repeat) -> the run's GPU id, for the `machines` flag (runs merged from several sessions or hosts)."""
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
                    flags = set(level_flags(a_rows, metric)) | set(level_flags(b_rows, metric))
                    if cards and machines_differ(cards, arm, a_rows["repeat"], base, b_rows["repeat"]):
                        flags.add("machines")
                    ratio = a.mean / b.mean if a.n and b.n and b.mean else float("nan")
                    interval = log_ratio_interval(a, b)
                    pub_ratio = float("nan")
                    if pub:
                        pub_ratio = published_value(published, pub[0], workload, conc, metric) / published_value(
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
                            "+".join(sorted(flags)),
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
