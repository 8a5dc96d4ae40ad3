"""The tidy frame of an experiment: one row per (arm, repeat, workload, concurrency) with the level's metrics, the
arm's metadata, the run's flags and the decode-efficiency columns, in config order; tables/levels.csv is its text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.analysis.runinfo import (
    AggregateError,
    RunInfo,
    arms_of,
    expectation_word,
    families_summary,
    load_runs,
    phases_summary,
    workload_names,
)
from attnbench.layout import tables_dir
from attnbench.measure import metrics
from attnbench.measure.lag import lag_reason
from attnbench.measure.records import RecordError

FLOAT_FORMAT = "%.6g"  # CSV: 6 significant digits hide last-bit differences between numpy/pandas builds
KEYS = ["experiment", "arm", "repeat", "workload", "concurrency"]


def levels_frame(exp_dir: Path, cfg: dict, runs: list[RunInfo] | None = None) -> pd.DataFrame:
    """All levels of all runs with arm metadata, flags and the decode-efficiency columns, in config order. `runs`:
    the experiment's load_runs, when the caller has them already (read here otherwise)."""
    arms = {a["name"]: a for a in arms_of(cfg)}
    frames = []
    for info in load_runs(exp_dir, cfg) if runs is None else runs:
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
            "expectation": expectation_word(info, arm),
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
