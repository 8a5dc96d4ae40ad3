"""`attnbench aggregate`: the tables of one experiment, built from the raw run folders only.

`build_tables` returns every table as exact text, so that `attnbench verify` can recompute them from the raw records
of a bundle and compare bytes. Everything here is therefore deterministic: rows are ordered by the config (arms,
workloads) and numbers, floats are written with fixed formats, and no table holds a time stamp or a path.
levels.parquet is written from the same text as levels.csv, but Parquet bytes depend on the pyarrow version, so only
the CSV is meant for byte comparison. Each input is read once per build (runs.load_runs, levels.levels_frame) and
each result computed once: the comparisons (stats.comparisons_frame) are written to comparisons.csv, which the
report and the plots read rather than compute again.

Tables (results/<exp>/tables/), from the modules that compute them:
  levels.csv / levels.parquet   one tidy row per (arm, repeat, workload, concurrency) (levels.py)
  comparisons.csv               every compared pair, level and metric: spreads, ratio, interval, verdict (stats.py)
  article_<arm>_<workload>.md   the article's table (llmapibenchmark's columns), mean over repeats (tables.py)
  arms_vs_baseline.md           each arm next to the baseline (and any `analysis.compare` pairs) (tables.py)
  vs_published.md / .csv        our numbers next to config/reference/article_published.csv (tables.py)
  flags.md, kernels.md, kernel_shares.csv, decode_efficiency.md (tables.py); missing_runs.txt when runs are missing
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from attnbench.analysis import tabletext as tbl
from attnbench.analysis.runinfo import AggregateError, arms_of, load_runs, missing_runs, workload_names
from attnbench.analysis.stats import comparisons_frame, read_published
from attnbench.analysis.tidy import FLOAT_FORMAT, levels_csv, levels_frame
from attnbench.layout import tables_dir

# Version of the tables' text. 2 (issue 13): intervals valid for the repeats, flagged artifacts, comparisons.csv.
TABLES_FORMAT = 2
FORMAT_FILE = "tables_format.txt"
COMPARISONS_FILE = "comparisons.csv"


def build_tables(exp_dir: Path, cfg: dict, *, tables_format: int | None = None) -> dict[str, str]:
    """File name -> exact text of every table of the experiment (same inputs, same bytes). tables_format None: the
    format the folder's tables were written in (tables_format_of), so that `attnbench verify` recomputes an older
    bundle's tables as they were made."""
    exp_dir = Path(exp_dir)
    if (tables_format or tables_format_of(exp_dir)) == 1:
        from attnbench.analysis import tables_v1  # format 1 only; it imports the modules above

        return tables_v1.build_tables(exp_dir, cfg)
    runs = load_runs(exp_dir, cfg)
    df = levels_frame(exp_dir, cfg, runs)
    published = read_published()
    tables = {FORMAT_FILE: f"{TABLES_FORMAT}\n", "levels.csv": levels_csv(df)}
    for arm in arms_of(cfg):
        for workload in workload_names(cfg):
            text = tbl.article_table(df, cfg, arm, workload)
            if text is not None:
                tables[f"article_{arm['name']}_{workload}.md"] = text
    cards = {(r.arm, r.repeat): (r.run.get("gpu") or {}).get("gpu") for r in runs}
    comp = comparisons_frame(df, cfg, published, cards)
    tables[COMPARISONS_FILE] = _csv(comp)
    tables["arms_vs_baseline.md"] = tbl.arms_vs_baseline(comp, cfg)
    vp = tbl.vs_published_frame(df, cfg, published)
    tables["vs_published.md"] = tbl.vs_published_md(vp)
    tables["vs_published.csv"] = _csv(vp)
    tables["flags.md"] = tbl.flags_md(df, runs)
    tables["kernels.md"] = tbl.kernels_md(runs, cfg)
    tables["kernel_shares.csv"] = _csv(tbl.kernel_shares_frame(runs))
    tables["decode_efficiency.md"] = tbl.decode_efficiency_md(df, cfg)
    missing = missing_runs(exp_dir, cfg)
    if missing:
        tables["missing_runs.txt"] = "".join(f"{m}\n" for m in missing)
    return tables


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


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
    frame = pd.read_csv(io.StringIO((out / "levels.csv").read_text(encoding="utf-8")))
    parquet = out / "levels.parquet"
    frame.to_parquet(parquet, index=False)
    written.append(parquet)
    stale = out / "missing_runs.txt"
    if stale.exists() and stale not in written:
        stale.unlink()
    return written


def read_comparisons(exp_dir: Path) -> pd.DataFrame:
    """tables/comparisons.csv as written by `aggregate`: the report and the plots read the comparisons from it."""
    path = tables_dir(exp_dir) / COMPARISONS_FILE
    if not path.exists():
        raise AggregateError(f"{path} is missing: run `attnbench aggregate {exp_dir} --config CFG` first")
    df = pd.read_csv(path, dtype={"flags": str, "verdict": str, "published_pair": str})
    for col in ("flags", "published_pair"):
        df[col] = df[col].fillna("")
    return df


def load_cfg(path: str) -> dict:
    from attnbench.config import load_config  # config.py belongs to the pipeline

    return load_config(path)


def experiment_parser(subparsers, name: str, about: str) -> argparse.ArgumentParser:
    """The parser of a subcommand working on one experiment folder (aggregate, plots, report, bundle): the same
    EXP_DIR and --config everywhere, and `about` both as its line in `attnbench --help` and as its description."""
    p = subparsers.add_parser(name, help=about, description=f"{about[0].upper()}{about[1:]}.")
    p.add_argument("exp_dir", metavar="EXP_DIR", help="the experiment folder, e.g. results/demo")
    p.add_argument("--config", required=True, help="the experiment's config YAML (or its config.effective.json)")
    return p


def print_written(write: Callable[[Path, dict], list[Path]]) -> Callable[[argparse.Namespace], int]:
    """A subcommand's function: write(EXP_DIR, config), then print each path written."""

    def run(args: argparse.Namespace) -> int:
        for path in write(Path(args.exp_dir), load_cfg(args.config)):
            print(path)
        return 0

    return run


def register(subparsers) -> None:
    p = experiment_parser(subparsers, "aggregate", "build the tables of one experiment from its raw run folders")
    p.set_defaults(func=print_written(write_tables))
