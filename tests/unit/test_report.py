"""report.py: report.md holds the sections and the answer block; report.html is self-contained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from attnbench import aggregate, plots, report

sys.path.insert(0, str(Path(__file__).parent))
import synth_runs  # noqa: E402


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, dict]:
    arms = [
        {"name": "nofa2", "backend": "XFORMERS", "variant": "xformers-cutlass"},
        {"name": "xformers", "backend": "XFORMERS", "article_backend": "XFORMERS"},
        {"name": "flash", "backend": "FLASH_ATTN", "article_backend": "FLASH_ATTN"},
    ]
    cfg = synth_runs.config(
        arms=arms, repeats=2, analysis={"compare": [{"arm": "flash", "baseline": "xformers"}]},
        description="errata-like synthetic experiment",
    )  # fmt: skip
    exp = tmp_path / "synth"
    synth_runs.write_experiment(exp, cfg, {"nofa2": [1.0, 1.0], "xformers": [1.5, 1.5], "flash": [3.0, 3.0]})
    aggregate.write_tables(exp, cfg)
    plots.write_plots(exp, cfg)
    return exp, cfg


def test_report_md_sections_and_answer(experiment):
    exp, cfg = experiment
    md_path, html_path = report.write_report(exp, cfg)
    md = md_path.read_text(encoding="utf-8")
    for heading in ("## What ran", "## Runs and hosts", "## Flags", "## Answer: speedups", "### flash over nofa2",
                    "### flash over xformers", "## Attention kernels per run", "## Plots"):  # fmt: skip
        assert heading in md, heading
    answer = md.split("### flash over xformers")[1].split("##")[0]
    # equal repeats -> the interval collapses onto the ratio; flash streams 2x faster than xformers
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in answer.splitlines() if line.startswith("| ")]
    levels = aggregate.read_levels_csv(exp)
    expected = []
    for workload, conc in [("short", 1), ("short", 2), ("long", 1)]:
        row = [workload, str(conc)]
        for metric in ("generation_throughput_tps", "prompt_throughput_tps"):
            at = levels[(levels["workload"] == workload) & (levels["concurrency"] == conc)]
            ratio = at[at["arm"] == "flash"][metric].mean() / at[at["arm"] == "xformers"][metric].mean()
            row.append(f"{ratio:.3f} [{ratio:.3f}, {ratio:.3f}]")  # identical repeats: the interval collapses
        expected.append(row)
    assert rows[1:] == expected
    assert 1.9 < float(expected[0][2].split()[0]) < 2.2  # flash streams 2x faster (less the fixed 2 ms latency)
    assert "No run is flagged" in md
    assert "![throughput short](plots/throughput_short.png)" in md
    assert "vLLM 0.32.0" in md and "cpu-x86_64" in md


def test_report_html_is_self_contained(experiment):
    exp, cfg = experiment
    _, html_path = report.write_report(exp, cfg)
    html = html_path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("data:image/png;base64,") == len(aggregate.workload_names(cfg)) * len(plots.KINDS)
    assert "<table>" in html and 'src="plots/' not in html


def test_report_lists_flagged_runs(tmp_path):
    cfg = synth_runs.config(repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    synth_runs.write_run(exp, cfg, "fast", 0, 2.0, status="failed")
    aggregate.write_tables(exp, cfg)
    md = report.build_report_md(exp, cfg)
    assert "- `fast` repeat 0: run failed: server died" in md
    assert "| fast (!) |" in md


def test_md_to_html_tables_escape_and_alignment(tmp_path):
    md = "# T <x>\n\npara `code` **b**\n\n| A | N |\n|---|--:|\n| a<b | 1 |\n\n- item\n"
    html = report.md_to_html(md, tmp_path, "t")
    assert "<h1>T &lt;x&gt;</h1>" in html
    assert "<p>para <code>code</code> <strong>b</strong></p>" in html
    assert "<td>a&lt;b</td><td class=r>1</td>" in html
    assert "<ul>\n<li>item</li>\n</ul>" in html
