"""plots.py on synthetic runs: every file named by plot_names exists, SVGs are byte-deterministic, flagged runs
are labelled."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from attnbench import aggregate, plots

sys.path.insert(0, str(Path(__file__).parent))
import synth_runs  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, dict]:
    cfg = synth_runs.config(repeats=2)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    synth_runs.write_run(exp, cfg, "base", 1, 1.2)
    synth_runs.write_run(exp, cfg, "fast", 0, 2.0)
    synth_runs.write_run(exp, cfg, "fast", 1, 2.2, status="failed")
    aggregate.write_tables(exp, cfg)
    return exp, cfg


def test_writes_every_named_plot(experiment):
    exp, cfg = experiment
    paths = plots.write_plots(exp, cfg)
    assert sorted(p.name for p in paths) == sorted(plots.plot_names(cfg))
    assert len(paths) == 2 * 3 * 2  # workloads x kinds x formats
    for p in paths:
        data = p.read_bytes()
        assert (data.startswith(PNG_MAGIC) if p.suffix == ".png" else b"<svg" in data[:500]), p


def test_svg_is_byte_deterministic(experiment):
    exp, cfg = experiment
    first = {p.name: p.read_bytes() for p in plots.write_plots(exp, cfg) if p.suffix == ".svg"}
    second = {p.name: p.read_bytes() for p in plots.write_plots(exp, cfg) if p.suffix == ".svg"}
    assert first == second
    assert all(b"<dc:date>" not in data for data in first.values())


def test_flagged_run_is_marked_and_labelled(experiment):
    exp, cfg = experiment
    plots.write_plots(exp, cfg)
    svg = (exp / "plots" / "throughput_short.svg").read_text(encoding="utf-8")
    assert "flagged run" in svg and "fast (!)" in svg
    speedup = (exp / "plots" / "speedup_short.svg").read_text(encoding="utf-8")
    assert "fast / base (!)" in speedup


def test_plots_need_the_tables_first(tmp_path):
    with pytest.raises(aggregate.AggregateError, match="levels.csv is missing"):
        plots.write_plots(tmp_path, synth_runs.config())
