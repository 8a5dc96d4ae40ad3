"""Per-level metrics, computed from the raw records only (records.jsonl + levels.jsonl).

Two sets, side by side:

The article's set, as llmapibenchmark (v1.0.2 era, the client of the reproduced article) defines it:
  latency_ms                 mean of the level's plain GET round trips to the server root (5 by default), in ms
  generation_throughput_tps  sum(completion_tokens) / (level wall window - latency)
  prompt_throughput_tps      sum(prompt_tokens of the first N requests) / (max TTFT of those N - latency)
  min_ttft_s, max_ttft_s     over the level's measured requests
llmapibenchmark sends one wave of N requests per level; we run a closed loop of several waves. Adaptation: the
generation throughput uses the whole measured window (first send to last finish) and every measured request; the
prompt throughput uses the first wave only, i.e. the N requests with index 0..N-1, which are sent together when the
level opens, exactly like llmapibenchmark's single wave (later requests start while others decode, so their TTFT
is no prefill-only figure). Only successful requests count; a level whose first wave all failed has NaN there.

The modern set, as vLLM's benchmark (vllm/benchmarks/serve.py) defines it, over successful measured requests:
  duration_s = the level's measured wall window; request/output/total throughput per second of it;
  TTFT; TPOT = (e2e - ttft) / (completion_tokens - 1) per request with more than one token; ITL = every gap between
  content chunks of every request; E2EL = end - start; each as mean, median, p90, p99 (numpy.percentile, linear),
  in ms. goodput_rps (only when limits are given): requests meeting every limit, per second.

Artifacts: where a definition breaks, the level keeps its numbers and says why in `artifacts` ("code: detail; ...";
codes in ARTIFACTS, the metrics each one touches in ARTIFACT_METRICS):
  prompt_formula   the latency probe is at least the first wave's max TTFT, so the article's prompt-throughput
                   denominator is zero or negative (prompt_throughput_tps is NaN)
  single_chunk     a stream delivered its tokens in one burst: one content chunk, or chunks arriving less than
                   BURST_S_PER_TOKEN apart per token (faster than any decode step: the server or the transport held
                   them back and released them together). Its TTFT is then the whole response and its TPOT
                   (e2e - ttft)/(n - 1) collapses towards 0; single_chunk_streams counts them. Seen on the CPU demo:
                   64 tokens in one read after 100 ms, median TPOT 0.004 ms.
  failed_requests  some measured requests of the level failed (every metric counts the successful ones only)
  incomplete       the level did not finish (server died, run aborted)
The client's own lag (lag.py), when the level recorded it: client_{loop,send}_lag_ms_{p50,p99,max}, client_cpu_pct
and client_lagged (either p99 beyond the level's stored limit).

Output is deterministic: rows sorted by their key, fixed column order and dtypes, so a verifier that recomputes
the table from the raw files gets an identical frame.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench.measure.lag import LAG_COLUMNS, lag_columns
from attnbench.measure.records import LevelRecord, RequestRecord, read_levels, read_requests

KEY_COLUMNS = ["experiment", "arm", "repeat", "workload", "concurrency"]
ARTICLE_COLUMNS = ["generation_throughput_tps", "prompt_throughput_tps", "min_ttft_s", "max_ttft_s", "latency_ms"]
DIST_COLUMNS = [f"{m}_ms_{s}" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "p90", "p99")]
MODERN_COLUMNS = [
    "request_throughput_rps",
    "output_throughput_tps",
    "total_throughput_tps",
    "duration_s",
    "n_ok",
    "n_failed",
    "success_rate",
    "prompt_tokens_mean",
    "completion_tokens_mean",
    *DIST_COLUMNS,
]
ARTIFACT_COLUMNS = ["single_chunk_streams", "artifacts"]
INT_COLUMNS = {"repeat", "concurrency", "n_ok", "n_failed", "single_chunk_streams"}
STR_COLUMNS = {"experiment", "arm", "workload", "artifacts"}
ARTIFACTS = {
    "prompt_formula": "article prompt throughput undefined (latency probe >= first-wave max TTFT)",
    "single_chunk": "streams with all tokens in one burst (their TTFT is the whole response; TPOT, ITL not measured)",
    "failed_requests": "failed requests (metrics count the successful ones)",
    "incomplete": "level did not finish",
}
BURST_S_PER_TOKEN = 5e-5  # 0.05 ms per token after the first: no engine decodes that fast, so it is delivery
_TIMING = [f"{m}_ms_{s}" for m in ("ttft", "tpot", "itl") for s in ("mean", "median", "p90", "p99")]
ARTIFACT_METRICS: dict[str, set[str] | None] = {  # None: every metric of the level
    "prompt_formula": {"prompt_throughput_tps"},
    # a burst's TTFT is the whole response: TTFT and the prompt throughput built on it are no prefill figures
    "single_chunk": set(_TIMING) | {"min_ttft_s", "max_ttft_s", "prompt_throughput_tps"},
    "failed_requests": None,
    "incomplete": None,
}
NAN = float("nan")


def _dist(values: list[float], scale: float = 1000.0) -> list[float]:
    """mean, median, p90, p99 of values (seconds) in ms; NaN when there are none."""
    if not values:
        return [NAN] * 4
    a = np.asarray(values, dtype=np.float64) * scale
    return [float(np.mean(a)), float(np.median(a)), float(np.percentile(a, 90)), float(np.percentile(a, 99))]


def _div(num: float, den: float) -> float:
    return num / den if den > 0 else NAN


def level_row(
    level: LevelRecord,
    measured: list[RequestRecord],
    *,
    ttft_limit_ms: float | None = None,
    tpot_limit_ms: float | None = None,
) -> dict:
    """Metrics of one level from its LevelRecord and its measured request records."""
    measured = sorted(measured, key=lambda r: r.index)
    ok = [r for r in measured if r.ok]
    latency_ms = float(np.mean(level.latency_ms)) if level.latency_ms else NAN
    latency_s = latency_ms / 1000.0
    duration = level.end - level.start
    prompt_sum = sum(r.prompt_tokens or 0 for r in ok)
    completion_sum = sum(r.completion_tokens or 0 for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    first_wave = [r for r in ok if r.index < level.concurrency and r.ttft is not None]

    e2els = [r.end - r.start for r in ok]
    tpots = [
        ((r.end - r.start) - r.ttft) / (r.completion_tokens - 1)
        for r in ok
        if r.completion_tokens and r.completion_tokens > 1 and r.ttft is not None
    ]
    itls = [gap for r in ok for gap in r.itl]

    row = {
        "experiment": level.experiment,
        "arm": level.arm,
        "repeat": level.repeat,
        "workload": level.workload,
        "concurrency": level.concurrency,
        # article set
        "generation_throughput_tps": _div(completion_sum, duration - latency_s) if ok else NAN,
        "prompt_throughput_tps": (
            _div(sum(r.prompt_tokens or 0 for r in first_wave), max(r.ttft for r in first_wave) - latency_s)
            if first_wave
            else NAN
        ),
        "min_ttft_s": min(ttfts) if ttfts else NAN,
        "max_ttft_s": max(ttfts) if ttfts else NAN,
        "latency_ms": latency_ms,
        # modern set
        "request_throughput_rps": _div(len(ok), duration),
        "output_throughput_tps": _div(completion_sum, duration),
        "total_throughput_tps": _div(prompt_sum + completion_sum, duration),
        "duration_s": duration,
        "n_ok": len(ok),
        "n_failed": len(measured) - len(ok),
        "success_rate": _div(len(ok), len(measured)),
        "prompt_tokens_mean": _div(prompt_sum, len(ok)),
        "completion_tokens_mean": _div(completion_sum, len(ok)),
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        row.update(zip([f"{name}_ms_{s}" for s in ("mean", "median", "p90", "p99")], _dist(values)))
    if ttft_limit_ms is not None or tpot_limit_ms is not None:
        good = 0
        for r in ok:
            if ttft_limit_ms is not None and (r.ttft is None or r.ttft * 1000 > ttft_limit_ms):
                continue
            if tpot_limit_ms is not None and r.completion_tokens and r.completion_tokens > 1:
                if ((r.end - r.start) - r.ttft) / (r.completion_tokens - 1) * 1000 > tpot_limit_ms:
                    continue
            good += 1
        row["goodput_rps"] = _div(good, duration)
    # The client's own lag (lag.py); sent requests only: a "not sent" record has no send time worth the name.
    row.update(
        lag_columns(
            level.client,
            [
                r.start - r.scheduled
                for r in measured
                if r.scheduled is not None and not (r.error or "").startswith("not sent")
            ],
        )
    )
    single = sum(1 for r in ok if one_burst(r))
    row["single_chunk_streams"] = single
    row["artifacts"] = "; ".join(level_artifacts(level, measured, ok, first_wave, latency_s, single))
    return row


def one_burst(r: RequestRecord) -> bool:
    """All tokens of the stream arrived in one burst (module docstring, single_chunk)."""
    if not r.completion_tokens or r.completion_tokens < 2 or r.ttft is None:
        return False
    return not r.itl or ((r.end - r.start) - r.ttft) / (r.completion_tokens - 1) < BURST_S_PER_TOKEN


def level_artifacts(
    level: LevelRecord,
    measured: list[RequestRecord],
    ok: list[RequestRecord],
    first_wave: list[RequestRecord],
    latency_s: float,
    single: int,
) -> list[str]:
    """ "code: detail" for each definition that breaks in this level (module docstring)."""
    out = []
    if first_wave:
        max_ttft = max(r.ttft for r in first_wave)
        if max_ttft - latency_s <= 0:
            out.append(
                f"prompt_formula: latency probe {latency_s * 1000:.2f} ms >= first-wave max TTFT "
                f"{max_ttft * 1000:.2f} ms"
            )
    if single:
        out.append(f"single_chunk: {single} of {len(ok)} streams in one burst")
    if len(measured) > len(ok) or level.failed:
        out.append(f"failed_requests: {max(len(measured) - len(ok), level.failed)} of {level.requests} failed")
    if not level.complete:
        out.append("incomplete: level did not finish")
    return out


def artifact_codes(text: str) -> list[str]:
    """The codes of an `artifacts` cell ("prompt_formula: ...; single_chunk: ..." -> [prompt_formula, single_chunk])."""
    return [part.split(":", 1)[0].strip() for part in str(text or "").split(";") if part.strip()]


def level_table(
    records: list[RequestRecord],
    levels: list[LevelRecord],
    *,
    ttft_limit_ms: float | None = None,
    tpot_limit_ms: float | None = None,
) -> pd.DataFrame:
    """One row per (experiment, arm, repeat, workload, concurrency) level; warmup and probe records excluded."""
    by_key: dict[tuple, list[RequestRecord]] = {}
    for r in records:
        if r.phase == "measure":
            by_key.setdefault((r.experiment, r.arm, r.repeat, r.workload, r.concurrency), []).append(r)
    rows = [
        level_row(
            lv,
            by_key.get((lv.experiment, lv.arm, lv.repeat, lv.workload, lv.concurrency), []),
            ttft_limit_ms=ttft_limit_ms,
            tpot_limit_ms=tpot_limit_ms,
        )
        for lv in levels
    ]
    columns = KEY_COLUMNS + ARTICLE_COLUMNS + MODERN_COLUMNS + ARTIFACT_COLUMNS
    if ttft_limit_ms is not None or tpot_limit_ms is not None:
        columns.append("goodput_rps")
    if any(lv.client is not None for lv in levels):  # runs made before lag.py have none: their tables stay as made
        columns += LAG_COLUMNS
        for row in rows:
            row.setdefault("client_lagged", False)
    frame = pd.DataFrame(rows, columns=columns)
    dtypes = {
        c: (
            "int64"
            if c in INT_COLUMNS
            else "object"
            if c in STR_COLUMNS
            else "bool"
            if c == "client_lagged"
            else "float64"
        )
        for c in columns
    }
    frame = frame.astype(dtypes)
    return frame.sort_values(KEY_COLUMNS, kind="mergesort").reset_index(drop=True)


def read_run(run_dir: str | Path, **limits) -> pd.DataFrame:
    """level_table of a run folder (records.jsonl + levels.jsonl)."""
    run_dir = Path(run_dir)
    return level_table(read_requests(run_dir / "records.jsonl"), read_levels(run_dir / "levels.jsonl"), **limits)


def format_table(frame: pd.DataFrame) -> str:
    """A compact human summary (article figures first) for terminals."""
    cols = [
        "workload",
        "concurrency",
        "n_ok",
        "n_failed",
        "generation_throughput_tps",
        "prompt_throughput_tps",
        "min_ttft_s",
        "max_ttft_s",
        "latency_ms",
        "ttft_ms_median",
        "tpot_ms_median",
        "output_throughput_tps",
    ]
    short = {
        "generation_throughput_tps": "gen_tps",
        "prompt_throughput_tps": "prompt_tps",
        "output_throughput_tps": "out_tps",
        "concurrency": "conc",
    }

    def fmt(v) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    header = [short.get(c, c) for c in cols]
    body = [[fmt(v) for v in row] for row in frame[cols].itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
