"""plots.py on synthetic runs: every file named by plot_names exists, SVGs are byte-deterministic, flagged runs
are labelled."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from attnbench.analysis import aggregate, plots, runinfo

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
    assert len(paths) == (2 * 4 + 2) * 2  # (workloads x kinds + experiment figures) x formats
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) if p.suffix == ".png" else b"<svg" in data[:500], p


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
    # two repeats: ratios are drawn hollow, without an interval, and the legend says why
    assert "ratio without interval (&lt; 3 repeats)" in speedup or "ratio without interval (< 3 repeats)" in speedup


def test_plots_need_the_tables_first(tmp_path):
    with pytest.raises(runinfo.AggregateError, match="levels.csv is missing"):
        plots.write_plots(tmp_path, synth_runs.config())


def kernels_json(phases: dict[str, dict[str, float]]) -> dict:
    """kernels.json in kernels.attribute's shape: per phase, attention families with their share of attention time."""

    def fams(shares: dict[str, float]) -> dict:
        return {
            f: {"time_us": 1000.0 * v, "count": 10, "share": v / 2, "attention_share": v, "kernels": []}
            for f, v in shares.items()
        } | {"other": {"time_us": 5000.0, "count": 50, "share": 0.5, "attention_share": None, "kernels": []}}

    everything: dict[str, float] = {}
    for shares in phases.values():
        for f, v in shares.items():
            everything[f] = everything.get(f, 0.0) + v / len(phases)
    return {
        "schema": 1,
        "device": "cuda",
        "time_basis": "gpu_kernel_time",
        "attention_share": 0.5,
        "families_seen": sorted(everything),
        "families": fams(everything),
        "phase_source": "kernel_name",
        "phases": {p: {"time_us": 1.0, "families": fams(v)} for p, v in phases.items()},
    }


ERRATA_KERNELS = {
    "xformers": {"prefill": {"pytorch_flash": 1.0}, "decode": {"paged_attention": 1.0}},
    "flash_attn": {"prefill": {"fa2": 1.0}, "decode": {"fa2": 1.0}},
    "xformers_cutlass": {
        "prefill": {"xformers_cutlass": 0.97, "paged_attention": 0.03},
        "decode": {"paged_attention": 1.0},
    },
}


def errata_experiment(exp: Path) -> dict:
    """The errata experiment's shape: three arms, three repeats, the article's arm backends, kernel probes."""
    arms = [
        {"name": "xformers", "backend": "XFORMERS", "article_backend": "XFORMERS"},
        {"name": "flash_attn", "backend": "FLASH_ATTN", "article_backend": "FLASH_ATTN"},
        {"name": "xformers_cutlass", "backend": "XFORMERS", "variant": "xformers-cutlass"},
    ]
    cfg = synth_runs.config(
        arms=arms,
        repeats=3,
        analysis={
            "compare": [{"arm": "flash_attn", "baseline": "xformers"}],
            "weights_gb": 0.01,
            "bandwidth_tb_s": 1.0,
        },
    )
    cfg["baseline"] = "xformers_cutlass"
    speeds = {"xformers": [1.0, 1.03, 0.98], "flash_attn": [1.02, 1.0, 1.05], "xformers_cutlass": [0.8, 0.82, 0.79]}
    for arm, per_repeat in speeds.items():
        for k, speed in enumerate(per_repeat):
            synth_runs.write_run(exp, cfg, arm, k, speed, kernels=kernels_json(ERRATA_KERNELS[arm]))
    aggregate.write_tables(exp, cfg)
    return cfg


def test_kernel_evidence_figure_shows_each_arms_families_per_phase(tmp_path):
    exp = tmp_path / "errata"
    cfg = errata_experiment(exp)
    shares = pd.read_csv(exp / "tables" / "kernel_shares.csv")
    # per run: the whole probe, prefill and decode; 'other' (not attention) never appears
    xf = shares[(shares["arm"] == "xformers") & (shares["repeat"] == 0)]
    assert set(zip(xf["phase"], xf["family"])) == {
        ("all", "pytorch_flash"),
        ("all", "paged_attention"),
        ("prefill", "pytorch_flash"),
        ("decode", "paged_attention"),
    }
    assert "other" not in set(shares["family"])
    plots.write_plots(exp, cfg)
    svg = (exp / "plots" / "kernels.svg").read_text(encoding="utf-8")
    for text in ("prefill", "decode", "xformers_cutlass", "pytorch_flash", "paged_attention", "fa2", "3 runs", "97%"):
        assert text in svg, text


def test_speedup_and_published_figures_carry_intervals_and_the_article(tmp_path):
    exp = tmp_path / "errata"
    cfg = errata_experiment(exp)
    plots.write_plots(exp, cfg)
    speedup = (exp / "plots" / "speedup_short.svg").read_text(encoding="utf-8")
    assert "article: FLASH_ATTN/XFORMERS" in speedup and "flash_attn / xformers_cutlass" in speedup
    assert "ratio without interval" not in speedup  # three repeats everywhere
    published = (exp / "plots" / "vs_published.svg").read_text(encoding="utf-8")
    assert "flash_attn (FLASH_ATTN): generation" in published and "xformers (XFORMERS): prompt" in published
    decode = (exp / "plots" / "decode_short.svg").read_text(encoding="utf-8")
    assert "memory-bandwidth bound (0.01 ms per step)" in decode and "% of the bound" in decode


def test_ttft_is_in_ms(experiment):
    exp, cfg = experiment
    plots.write_plots(exp, cfg)
    svg = (exp / "plots" / "ttft_short.svg").read_text(encoding="utf-8")
    assert "TTFT (ms)" in svg and "TTFT (s)" not in svg
