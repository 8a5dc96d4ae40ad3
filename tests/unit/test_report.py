"""report.py: report.md holds the sections and the answer block; report.html is self-contained."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from attnbench.analysis import aggregate, mdhtml, plots, report, runinfo, stats, tidy
from attnbench.config import load_config
from attnbench.config.experiment import Departure, Experiment
from attnbench.errors import ConfigError
from attnbench.paths import REPO_ROOT

sys.path.insert(0, str(Path(__file__).parent))
import synth_runs  # noqa: E402

ARMS = [
    {"name": "nofa2", "backend": "XFORMERS", "variant": "xformers-cutlass"},
    {"name": "xformers", "backend": "XFORMERS", "article_backend": "XFORMERS"},
    {"name": "flash", "backend": "FLASH_ATTN", "article_backend": "FLASH_ATTN"},
]


def errata_like(tmp_path: Path, speeds: dict[str, list[float]]) -> tuple[Path, dict]:
    cfg = synth_runs.config(
        arms=ARMS,
        repeats=len(speeds["flash"]),
        analysis={"compare": [{"arm": "flash", "baseline": "xformers"}]},
        description="errata-like synthetic experiment",
    )
    exp = tmp_path / "synth"
    synth_runs.write_experiment(exp, cfg, speeds)
    aggregate.write_tables(exp, cfg)
    plots.write_plots(exp, cfg)
    return exp, cfg


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, dict]:
    # three repeats, a few percent apart, so that every level carries an interval
    return errata_like(
        tmp_path, {"nofa2": [1.0, 1.02, 0.98], "xformers": [1.5, 1.53, 1.47], "flash": [3.0, 3.06, 2.94]}
    )


def answer_rows(md: str, pair: str) -> list[list[str]]:
    answer = md.split(f"### {pair}")[1].split("##")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in answer.splitlines() if line.startswith("| ")]


def test_report_md_sections_and_answer(experiment):
    exp, cfg = experiment
    md_path, html_path = report.write_report(exp, cfg)
    md = md_path.read_text(encoding="utf-8")
    for heading in (
        "## What ran",
        "## Runs and hosts",
        "## Flags",
        "## Answer: speedups",
        "### flash over nofa2",
        "### flash over xformers",
        "## Attention kernels per run",
        "## Plots",
    ):
        assert heading in md, heading
    rows = answer_rows(md, "flash over xformers")
    assert rows[0] == [
        "Workload",
        "Concurrency",
        "n",
        "generation ratio [95% CI]",
        "generation verdict",
        "generation: article",
        "prompt ratio [95% CI]",
        "prompt verdict",
        "prompt: article",
        "flags",
    ]
    levels = tidy.read_levels_csv(exp)
    published = stats.read_published()
    for row, (workload, conc) in zip(rows[1:], [("short", 1), ("short", 2), ("long", 1)], strict=True):
        assert row[:3] == [workload, str(conc), "3/3"]
        at = levels[(levels["workload"] == workload) & (levels["concurrency"] == conc)]
        for metric, (ratio_cell, verdict, article) in zip(
            ("generation_throughput_tps", "prompt_throughput_tps"), (row[3:6], row[6:9])
        ):
            ratio = at[at["arm"] == "flash"][metric].mean() / at[at["arm"] == "xformers"][metric].mean()
            value, lo, hi = (float(x) for x in ratio_cell.replace("[", "").replace("]", "").replace(",", "").split())
            assert value == pytest.approx(ratio, abs=5e-4) and lo < value < hi and lo > 1
            assert verdict == "higher"
            pub = published[(published["workload"] == workload) & (published["concurrency"] == conc)]
            expected = (
                pub[pub["backend"] == "FLASH_ATTN"][metric].iloc[0] / pub[pub["backend"] == "XFORMERS"][metric].iloc[0]
            )
            assert float(article) == pytest.approx(expected, abs=6e-4)  # comparisons.csv keeps 6 digits
    # flash streams 2x faster than xformers (less the fixed 2 ms latency)
    assert 1.9 < float(rows[1][3].split()[0]) < 2.2
    # the true no-FA2 baseline has no article counterpart of its own: the article's claim FLASH_ATTN/XFORMERS stands
    assert "FLASH_ATTN/XFORMERS" in md.split("### flash over nofa2")[1].split("###")[0]
    assert "No run is flagged" in md
    assert "![throughput short](plots/throughput_short.png)" in md
    assert "vLLM 0.32.0" in md and "cpu-x86_64" in md


def test_two_repeats_quote_no_interval_and_say_so(tmp_path):
    exp, cfg = errata_like(tmp_path, {"nofa2": [1.0, 1.5], "xformers": [1.5, 1.2], "flash": [3.0, 1.0]})
    md = report.build_report_md(exp, cfg)
    for row in answer_rows(md, "flash over xformers")[1:]:
        assert row[2] == "2/2" and "[" not in row[3] and row[4] == "n/a (2 repeats)"
    assert "With fewer than 3 repeats no level has an interval: not resolved." in md
    assert "(2 repeats per level)" in md


def test_report_html_is_self_contained(experiment):
    exp, cfg = experiment
    _, html_path = report.write_report(exp, cfg)
    html = html_path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    figures = len(runinfo.workload_names(cfg)) * len(plots.KINDS) + len(plots.FIGURES)
    assert html.count("data:image/png;base64,") == figures
    assert "<table>" in html and 'src="plots/' not in html


def test_report_lists_flagged_runs(tmp_path):
    cfg = synth_runs.config(repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    synth_runs.write_run(exp, cfg, "fast", 0, 2.0, status="failed")
    aggregate.write_tables(exp, cfg)
    md = report.build_report_md(exp, cfg)
    assert "| fast | 0      | run failed: server died |" in md or "run failed: server died" in md.split("## Flags")[1]
    assert "| fast (!) |" in md


def test_md_to_html_tables_escape_and_alignment(tmp_path):
    md = "# T <x>\n\npara `code` **b**\n\n| A | N |\n|---|--:|\n| a<b | 1 |\n\n- item\n"
    html = mdhtml.md_to_html(md, tmp_path, "t")
    assert "<h1>T &lt;x&gt;</h1>" in html
    assert "<p>para <code>code</code> <strong>b</strong></p>" in html
    assert "<td>a&lt;b</td><td class=r>1</td>" in html
    assert "<ul>\n<li>item</li>\n</ul>" in html


DEPARTURES = [
    {"what": "--max-model-len 5000 -> 3300", "why": "the synthetic model's context | one GPU's memory"},
    {"what": "no --trust-remote-code", "why": "Qwen2 is built into\n vLLM 0.7.1"},
]


def test_departures_from_the_article_get_their_own_section(experiment):
    exp, cfg = experiment
    with_them = dict(cfg, report={"departures": DEPARTURES})
    md = report.build_report_md(exp, with_them)
    section = md.split("## Departures from the article\n")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    # free text made one line and '|' made '/', so each departure stays one row of two cells
    assert rows == [
        ["What", "Why"],
        ["--max-model-len 5000 -> 3300", "the synthetic model's context / one GPU's memory"],
        ["no --trust-remote-code", "Qwen2 is built into vLLM 0.7.1"],
    ]
    assert md.index("## What ran") < md.index("## Departures from the article") < md.index("## Runs and hosts")


def test_without_departures_the_report_is_unchanged(experiment):
    """No `report` key (every bundle made before the field existed) or an empty list: the same bytes, no section."""
    exp, cfg = experiment
    before = report.build_report_md(exp, cfg)
    assert "Departures" not in before
    assert report.build_report_md(exp, dict(cfg, report={"departures": []})) == before


def test_departures_are_checked_by_the_config_schema():
    demo = REPO_ROOT / "config" / "demo.yaml"
    base = load_config(demo)
    assert "report" not in base  # optional and without a default: effective configs stay as they were
    cfg = load_config(dict(base, report={"departures": DEPARTURES}))
    assert cfg["report"]["departures"] == DEPARTURES
    with pytest.raises(ConfigError, match="report.departures"):
        load_config(dict(base, report={"departures": [{"what": "--dtype"}]}))
    with pytest.raises(ConfigError, match="report"):
        load_config(dict(base, report={"departure": DEPARTURES}))
    tree = Experiment.from_config(cfg).report
    assert tree.departures[1] == Departure("no --trust-remote-code", "Qwen2 is built into\n vLLM 0.7.1")
    assert Experiment.from_config(base).report is None


def test_report_and_plots_read_the_comparisons_aggregate_wrote(experiment, monkeypatch):
    """The arm comparison is computed once, by aggregate (tables/comparisons.csv): report and plots only read it.
    With the computation made to fail they still run, and a ratio edited in the table is the one the report shows."""
    exp, cfg = experiment

    def not_again(*args, **kwargs):
        raise AssertionError("comparison computed again after aggregate")

    for name in ("comparisons_frame", "log_ratio_interval", "verdict"):
        monkeypatch.setattr(stats, name, not_again)
    path = exp / "tables" / "comparisons.csv"
    comp = pd.read_csv(path)
    first = (comp["arm"] == "flash") & (comp["baseline"] == "nofa2") & (comp["metric"] == "generation_throughput_tps")
    row = comp.index[first][0]
    edited = comp.loc[row, "ci_high"]  # still inside its interval, so the plot's error bar stays drawable
    assert f"{comp.loc[row, 'ratio']:.3f}" != f"{edited:.3f}"
    comp.loc[row, "ratio"] = edited
    comp.to_csv(path, index=False)
    plots.write_plots(exp, cfg)
    md = report.write_report(exp, cfg)[0].read_text(encoding="utf-8")
    assert answer_rows(md, "flash over nofa2")[1][3].startswith(f"{edited:.3f} [")  # [0]: the header
