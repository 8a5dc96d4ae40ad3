"""Open-loop metrics from a run folder's raw files only (openloop.jsonl, openloop_levels.jsonl; openloop.py writes
them): one row per rate level, and the report's section of them."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attnbench.measure.level import NOT_SENT
from attnbench.measure.metrics import KEY_COLUMNS, level_row
from attnbench.measure.records import LevelRecord, RequestRecord, read_levels, read_requests

RECORDS_FILE, LEVELS_FILE = "openloop.jsonl", "openloop_levels.jsonl"
RATE_COLUMNS = ["rate", "arrival", "burstiness", "max_in_flight", "sent", "achieved_rate_rps"]


def level_table(records: list[RequestRecord], levels: list[LevelRecord]) -> pd.DataFrame:
    """One row per open-loop level (experiment, arm, repeat, workload, rate): metrics.py's columns, the client's
    lag, goodput under the level's stored limits, and the rate columns (RATE_COLUMNS)."""
    by_key: dict[tuple, list[RequestRecord]] = {}
    for r in records:
        if r.phase == "measure":
            by_key.setdefault((r.experiment, r.arm, r.repeat, r.workload, r.rate), []).append(r)
    rows = []
    for lv in levels:
        meta = lv.open_loop or {}
        measured = by_key.get((lv.experiment, lv.arm, lv.repeat, lv.workload, lv.rate), [])
        limits = {"ttft_limit_ms": meta.get("ttft_limit_ms"), "tpot_limit_ms": meta.get("tpot_limit_ms")}
        row = level_row(lv, measured, **limits)
        row.setdefault("goodput_rps", float("nan"))
        sent = [r.start for r in measured if not (r.error or "").startswith(NOT_SENT)]
        origin = meta.get("origin")
        span = (max(sent) - origin) if sent and origin is not None else 0.0
        row.update(
            {
                "rate": lv.rate,
                "arrival": meta.get("arrival"),
                "burstiness": meta.get("burstiness"),
                "max_in_flight": meta.get("max_in_flight") or 0,
                "sent": len(sent),
                "achieved_rate_rps": len(sent) / span if span > 0 else float("nan"),
            }
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    keys = [c for c in KEY_COLUMNS if c != "concurrency"] + ["rate"]
    first = keys + ["arrival", "burstiness", "max_in_flight", "sent", "achieved_rate_rps", "goodput_rps"]
    frame = frame[first + [c for c in frame.columns if c not in first and c != "concurrency"]]
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True)


def read_run(run_dir: str | Path) -> pd.DataFrame:
    run_dir = Path(run_dir)
    if not (run_dir / LEVELS_FILE).exists():
        return pd.DataFrame()
    return level_table(read_requests(run_dir / RECORDS_FILE), read_levels(run_dir / LEVELS_FILE))


REPORT_COLUMNS = [
    ("workload", "workload"),
    ("rate", "target/s"),
    ("achieved_rate_rps", "achieved/s"),
    ("n_ok", "ok"),
    ("n_failed", "failed"),
    ("ttft_ms_median", "TTFT p50 ms"),
    ("ttft_ms_p99", "TTFT p99 ms"),
    ("tpot_ms_median", "TPOT p50 ms"),
    ("goodput_rps", "goodput/s"),
    ("output_throughput_tps", "out tok/s"),
    ("client_send_lag_ms_p99", "send lag p99 ms"),
    ("client_loop_lag_ms_p99", "loop lag p99 ms"),
]


def report_section(exp_dir: Path) -> str:
    """Markdown: one table per run that ran open-loop levels ('' when none did). (!) marks a client-lagged level."""
    parts = []
    for run_dir in sorted(Path(exp_dir).glob("runs/*/rep*")):
        frame = read_run(run_dir)
        if frame.empty:
            continue
        head = "| " + " | ".join(h for _, h in REPORT_COLUMNS) + " |"
        lines = [
            f"### {run_dir.parent.name} rep{run_dir.name[3:]} ({frame['arrival'].iloc[0]} arrivals)",
            "",
            head,
            "|" + "---|" * len(REPORT_COLUMNS),
        ]
        for row in frame.to_dict("records"):
            cells = [_cell(row.get(c)) for c, _ in REPORT_COLUMNS]
            if row.get("client_lagged"):
                cells[0] += " (!)"
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return (
        "## Open loop\n\nRequests sent at scheduled times (openloop.py); achieved = requests sent / time to the "
        "last send. (!) marks a level where our client lagged (lag.py).\n\n" + "\n\n".join(parts) + "\n"
    )


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)
