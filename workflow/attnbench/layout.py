"""Where things sit inside an experiment folder (results/<experiment>/): run folders, the files a run writes, the
derived tables. Writers (the run orchestrator, aggregate) and readers (bundle, verify) ask here, so a renamed file is
renamed once."""

from __future__ import annotations

from pathlib import Path

# Every finished run folder holds these (the Snakemake rule's outputs; workflow/rules/common.smk lists the same).
RUN_FILES = ("records.jsonl", "levels.jsonl", "server.log", "run.json")
# Written where the run had a kernel probe, GPU telemetry, open-loop rates or scraped the server's /metrics.
OPTIONAL_RUN_FILES = (
    "kernels.json",
    "gpu.jsonl",
    "openloop.jsonl",
    "openloop_levels.jsonl",
    "servermetrics.jsonl",
)
# The raw measurements: a run holds records once both exist (a run killed before its first level has requests only).
RAW_RECORD_FILES = ("records.jsonl", "levels.jsonl")
TABLES_DIR = "tables"


def run_rel(arm: str, repeat: int) -> str:
    """A run folder's path inside the experiment folder, as the bundle manifest spells it."""
    return f"runs/{arm}/rep{repeat}"


def run_dir(exp_dir: Path, arm: str, repeat: int) -> Path:
    return Path(exp_dir) / run_rel(arm, repeat)


def has_raw_records(rdir: Path) -> bool:
    return all((Path(rdir) / name).exists() for name in RAW_RECORD_FILES)


def tables_dir(exp_dir: Path) -> Path:
    return Path(exp_dir) / TABLES_DIR
