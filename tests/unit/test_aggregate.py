"""aggregate.py: statistics, table text, determinism, the published join and flags.

Hand-made level frames test the table code on numbers checked by hand; synthetic raw records (attnbench.measure.records
dataclasses, tests/unit/synth_runs.py) go through metrics.read_run like a real run does."""

from __future__ import annotations

import io
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from attnbench.analysis import aggregate, markdown, runinfo, stats, tabletext, tidy
from attnbench.analysis.runinfo import AggregateError
from attnbench.analysis.stats import Spread
from attnbench.analysis.stats import log_ratio_interval as ratio_interval
from attnbench.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import synth_runs  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def frame(rows: list[tuple]) -> pd.DataFrame:
    """(arm, repeat, workload, concurrency, generation tps, tpot ms, flagged) -> a level frame."""
    return pd.DataFrame(
        [
            {
                "experiment": "synth",
                "arm": a,
                "repeat": r,
                "workload": w,
                "concurrency": c,
                "generation_throughput_tps": g,
                "prompt_throughput_tps": 10 * g,
                "min_ttft_s": 0.1,
                "max_ttft_s": 0.2,
                "ttft_ms_median": 150.0,
                "tpot_ms_median": t,
                "latency_ms": 2.0,
                "flagged": f,
                "flag_reason": "run failed" if f else "",
            }
            for a, r, w, c, g, t, f in rows
        ]
    )


# --- statistics ------------------------------------------------------------------------------------------------


def test_t_quantiles():
    assert stats.t975(2) == 4.303 and stats.t975(2.9) == 4.303  # Welch df rounded down
    assert stats.t975(30) == 2.042
    assert stats.t975(120) == pytest.approx(1.980, abs=0.002)


def test_spread_counts_only_defined_repeats():
    s = Spread.of([100.0, 110.0, 120.0, float("nan")])
    assert (s.mean, s.sd, s.n) == (110.0, 10.0, 3) and s.cv == pytest.approx(10 / 110)
    one = Spread.of([5.0])
    assert one.n == 1 and math.isnan(one.sd) and math.isnan(one.cv)


def test_ratio_interval_hand_checked():
    # arm 100/110/120 (sd 10, CV 1/11), baseline 50 x 3 (no spread): Welch df = 2, t = 4.303;
    # half width on the log scale = 4.303 * (1/11) / sqrt(3) = 0.22584; ratio 2.2.
    lo, hi = ratio_interval(Spread.of([100.0, 110.0, 120.0]), Spread.of([50.0, 50.0, 50.0]))
    half = 4.303 * (10 / 110) / math.sqrt(3)
    assert lo == pytest.approx(2.2 * math.exp(-half)) and hi == pytest.approx(2.2 * math.exp(half))
    assert (round(lo, 3), round(hi, 3)) == (1.755, 2.757)


def test_constant_repeats_give_the_ratio_itself():
    assert ratio_interval(Spread.of([2.0] * 3), Spread.of([1.0] * 3)) == (2.0, 2.0)


def test_two_repeats_give_no_interval_where_the_bootstrap_gave_nonsense():
    # The pattern behind the "1.518 [0.664, 555.315]": prompt throughput of two repeats 23x apart (the
    # article's formula with a denominator near zero). The old percentile bootstrap quoted the resampling extremes;
    # two repeats carry no interval at all.
    a, b = Spread.of([20.0, 460.0]), Spread.of([160.0, 130.0])
    assert ratio_interval(a, b) is None
    assert stats.verdict(a, b, None) == "n/a (2 repeats)"
    assert markdown.fmt_interval(float("nan"), float("nan"), 2, 2) == "n/a (2 repeats)"
    assert stats.verdict(Spread.of([1.0] * 3), b, None) == "n/a (3/2 repeats)"


def test_a_quoted_number_adds_no_variance_and_needs_no_repeats():
    """compare's published reference: one number without spread against our repeats."""
    ours, published = Spread.of([100.0, 104.0, 96.0]), Spread.quoted(50.0)
    lo, hi = ratio_interval(ours, published)
    half = stats.t975(2) * ours.cv / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2.0 * math.exp(-half), 2.0 * math.exp(half)))
    assert stats.verdict(ours, published, (lo, hi)) == "resolved"
    two = Spread.of([100.0, 104.0])
    assert ratio_interval(two, published) is None and stats.verdict(two, published, None) == "n/a (2 repeats)"


def test_verdicts():
    tight_fast, tight_base = Spread.of([200.0, 202.0, 198.0]), Spread.of([100.0, 101.0, 99.0])
    assert stats.verdict(tight_fast, tight_base, ratio_interval(tight_fast, tight_base)) == "resolved"
    same = Spread.of([100.5, 99.0, 101.5])
    assert stats.verdict(same, tight_base, ratio_interval(same, tight_base)) == "not resolved (interval spans 1)"
    # Far apart means, but one side spreads 30%: the repeats do not support quoting the ratio.
    noisy = Spread.of([140.0, 200.0, 260.0])
    assert stats.verdict(noisy, tight_base, ratio_interval(noisy, tight_base)) == "not resolved (CV 30% > 10%)"


# --- tables from hand-made frames ------------------------------------------------------------------------------


def test_arms_vs_baseline_row_hand_checked():
    cfg = synth_runs.config(repeats=3)
    df = frame(
        [
            ("base", 0, "short", 1, 100.0, 20.0, False),
            ("base", 1, "short", 1, 110.0, 20.0, False),
            ("base", 2, "short", 1, 120.0, 20.0, False),
            ("fast", 0, "short", 1, 220.0, 10.0, False),
            ("fast", 1, "short", 1, 220.0, 10.0, False),
            ("fast", 2, "short", 1, 220.0, 10.0, False),
        ]
    )
    comp = stats.comparisons_frame(df, cfg, stats.read_published())
    gen = comp[comp["metric"] == "generation_throughput_tps"].iloc[0]
    assert (gen["arm"], gen["baseline"], gen["arm_n"], gen["base_n"]) == ("fast", "base", 3, 3)
    assert gen["ratio"] == pytest.approx(2.0) and gen["verdict"] == "resolved"
    # the mirror of test_ratio_interval_hand_checked: 2 * exp(-+0.22584)
    assert (round(gen["ci_low"], 3), round(gen["ci_high"], 3)) == (1.596, 2.507)
    # the article's own ratio for this pair (FLASH_ATTN / XFORMERS, short, c=1): 60.04 / 58.49
    assert gen["published_pair"] == "FLASH_ATTN/XFORMERS"
    assert gen["published_ratio"] == pytest.approx(60.04 / 58.49)
    text = tabletext.arms_vs_baseline(comp, cfg)
    row = next(line for line in text.splitlines() if "Generation throughput" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "1",
        "Generation throughput (tok/s)",
        "110.00 ± 10.00 (9.1%)",
        "220.00 ± 0.00 (0.0%)",
        "3/3",
        "2.000",
        "[1.596, 2.507]",
        "resolved",
        "-",
    ]
    assert "## fast vs base / short" in text
    assert "/ long" not in text  # no level of the long workload in the frame


def test_arms_vs_baseline_two_repeats_say_na_and_marks_flags():
    cfg = synth_runs.config(repeats=2)
    df = frame(
        [
            ("base", 0, "short", 2, 100.0, 20.0, False),
            ("base", 1, "short", 2, 104.0, 20.0, False),
            ("fast", 0, "short", 2, 150.0, 10.0, True),
            ("fast", 1, "short", 2, 160.0, 10.0, False),
        ]
    )
    text = tabletext.arms_vs_baseline(stats.comparisons_frame(df, cfg, stats.read_published()), cfg)
    row = next(line for line in text.splitlines() if "Generation throughput" in line)
    assert "n/a (2 repeats)" in row and "[" not in row.split("|")[7]
    assert "2 (!)" in row and row.rstrip(" |").endswith("run")
    assert "[run] a run of the level is flagged" in text


def test_extra_compare_pairs_and_unknown_arm():
    arms = [{"name": "nofa2"}, {"name": "xformers"}, {"name": "flash"}]
    cfg = synth_runs.config(arms=arms, analysis={"compare": [{"arm": "flash", "baseline": "xformers"}]})
    assert stats.comparison_pairs(cfg) == [("xformers", "nofa2"), ("flash", "nofa2"), ("flash", "xformers")]
    cfg["analysis"]["compare"] = [{"arm": "flash", "baseline": "nope"}]
    with pytest.raises(AggregateError, match="nope is not an arm; allowed values: flash, nofa2, xformers"):
        stats.comparison_pairs(cfg)


def test_vs_published_join_matches_backend_workload_concurrency():
    cfg = synth_runs.config()
    df = frame(
        [
            ("base", 0, "short", 1, 50.0, 20.0, False),
            ("base", 1, "short", 1, 70.0, 20.0, False),
            ("base", 0, "short", 3, 70.0, 20.0, False),  # the article has no concurrency 3
            ("fast", 0, "long", 2, 80.0, 20.0, True),
        ]
    )
    vp = tabletext.vs_published_frame(df, cfg, stats.read_published())
    assert list(zip(vp["arm"], vp["article_backend"], vp["workload"], vp["concurrency"])) == [
        ("base", "XFORMERS", "short", 1),
        ("fast", "FLASH_ATTN", "long", 2),
    ]
    base = vp.iloc[0]
    assert base["generation_throughput_tps_published"] == 58.49  # article_published.csv, XFORMERS short c=1
    assert base["generation_throughput_tps_ours"] == 60.0
    assert base["generation_throughput_tps_ratio"] == pytest.approx(60.0 / 58.49)
    assert base["repeats"] == 2
    fast = vp.iloc[1]
    assert fast["generation_throughput_tps_published"] == 78.83 and bool(fast["flagged"])
    md = tabletext.vs_published_md(vp)
    assert "60.00" in md and "58.49" in md
    assert "2 (!)" in md


def test_vs_published_without_article_backend_says_so():
    cfg = synth_runs.config(arms=[{"name": "a"}, {"name": "b"}])
    df = frame([("a", 0, "short", 1, 50.0, 20.0, False)])
    vp = tabletext.vs_published_frame(df, cfg, stats.read_published())
    assert vp.empty
    assert "No arm names an `article_backend`" in tabletext.vs_published_md(vp)


def test_decode_efficiency_hand_checked():
    cfg = synth_runs.config(analysis={"weights_gb": 15.2, "bandwidth_tb_s": 3.35})
    assert tidy.decode_bound_ms(cfg) == pytest.approx(4.537, abs=1e-3)
    cfg = synth_runs.config(analysis={"weights_gb": 0.1, "bandwidth_tb_s": 0.05})  # 2 ms bound
    df = frame(
        [
            ("base", 0, "short", 1, 1.0, 20.0, False),
            ("base", 1, "short", 1, 1.0, 30.0, False),
            ("base", 0, "short", 2, 1.0, 99.0, False),
        ]
    )
    text = tabletext.decode_efficiency_md(df, cfg)
    row = next(line for line in text.splitlines() if line.startswith("| base"))
    assert [c.strip() for c in row.strip("|").split("|")] == ["base", "short", "25.000", "2.000", "8.0", "2"]
    assert "No bound" in tabletext.decode_efficiency_md(df, synth_runs.config())


def test_kernel_summaries():
    # kernels.json entries: attention families carry attention_share, "other" (GEMMs...) has None and is left out
    fams = {
        "paged_attention": {"share": 0.05, "attention_share": 0.25},
        "fa2": {"share": 0.15, "attention_share": 0.75},
        "other": {"share": 0.8, "attention_share": None},
    }
    assert runinfo.families_summary(fams) == "fa2 75.0%, paged_attention 25.0%"
    assert runinfo.families_summary({"b": 0.4, "a": 0.6}) == "a 60.0%, b 40.0%"  # plain shares
    phases = {
        "decode": {"time_us": 1, "families": {"paged_attention": {"share": 0.1, "attention_share": 1.0}}},
        "idle": {"time_us": 1, "families": {"other": {"share": 1.0, "attention_share": None}}},
        "prefill": {"time_us": 1, "families": {"fa2": {"share": 0.2, "attention_share": 1.0}}},
    }
    assert runinfo.phases_summary(phases) == "prefill: fa2 100.0%; decode: paged_attention 100.0%"
    assert runinfo.families_summary(None) == "" and runinfo.phases_summary(None) == ""
    assert runinfo.attention_share_text({"attention_share": 0.0581}) == "5.8%"
    assert runinfo.attention_share_text(None) == "n/a"


def test_md_table_pads_and_aligns():
    text = markdown.md_table(["A", "Num"], [["x", "1.5"], ["long", "10.25"]], right={1})
    assert text.splitlines() == ["| A    |   Num |", "|------|------:|", "| x    |   1.5 |", "| long | 10.25 |"]
    assert markdown.md_table(["A"], [["x | y"]]).splitlines()[2] == "| x / y |"


# --- from raw records (metrics.read_run) -----------------------------------------------------------------------


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[Path, dict]:
    cfg = synth_runs.config(repeats=2, analysis={"weights_gb": 0.1, "bandwidth_tb_s": 0.05})
    exp = tmp_path / "synth"
    synth_runs.write_experiment(exp, cfg, {"base": [1.0, 1.25], "fast": [2.0, 2.5]})
    return exp, cfg


def test_build_tables_names_and_rows(experiment):
    exp, cfg = experiment
    tables = aggregate.build_tables(exp, cfg)
    assert set(tables) == {
        "tables_format.txt",
        "levels.csv",
        "arms_vs_baseline.md",
        "vs_published.md",
        "vs_published.csv",
        "kernels.md",
        "comparisons.csv",
        "flags.md",
        "kernel_shares.csv",
        "decode_efficiency.md",
        "article_base_short.md",
        "article_base_long.md",
        "article_fast_short.md",
        "article_fast_long.md",
    }
    levels = pd.read_csv(io.StringIO(tables["levels.csv"]))
    # 2 arms x 2 repeats x (2 short levels + 1 long level), in config order
    assert len(levels) == 12
    assert list(levels["arm"]) == ["base"] * 6 + ["fast"] * 6
    assert list(levels["workload"][:3]) == ["short", "short", "long"]
    assert list(levels["concurrency"][:3]) == [1, 2, 1]
    assert set(levels["requested_backend"]) == {"CPU_ATTN", "FLASH_ATTN"}
    assert not levels["flagged"].any()
    # Hand-checked first row (base, speed 1, short, c=1): one request of 8 tokens, TTFT 0.05 s, 7 gaps of 0.02 s,
    # window 0.19 s, latency 2 ms. llmapibenchmark's formulas (metrics.py): generation 8 / (0.19 - 0.002),
    # prompt 45 / (0.05 - 0.002); TPOT 0.14 / 7 = 20 ms; decode efficiency 2 ms / 20 ms = 10%.
    first = levels.iloc[0]
    assert (first["arm"], first["repeat"], first["workload"], first["concurrency"]) == ("base", 0, "short", 1)
    assert first["generation_throughput_tps"] == pytest.approx(8 / 0.188, rel=1e-5)
    assert first["prompt_throughput_tps"] == pytest.approx(45 / 0.048, rel=1e-5)
    assert first["min_ttft_s"] == pytest.approx(0.05) and first["tpot_ms_median"] == pytest.approx(20.0)
    assert first["decode_efficiency_pct"] == pytest.approx(10.0, rel=1e-5)
    assert tables["levels.csv"].splitlines()[1].split(",")[:5] == ["synth", "base", "0", "short", "1"]
    # decode efficiency only at concurrency 1: 2 ms bound / measured median TPOT
    one = levels[levels["concurrency"] == 1]
    assert (one["decode_bound_ms"] == 2).all()
    assert one["decode_efficiency_pct"].to_numpy() == pytest.approx(200 / one["tpot_ms_median"].to_numpy(), rel=1e-4)
    assert levels[levels["concurrency"] == 2]["decode_efficiency_pct"].isna().all()


def test_article_table_is_the_mean_over_repeats(experiment):
    exp, cfg = experiment
    tables = aggregate.build_tables(exp, cfg)
    levels = pd.read_csv(io.StringIO(tables["levels.csv"]))
    sel = levels[(levels["arm"] == "fast") & (levels["workload"] == "short") & (levels["concurrency"] == 2)]
    expected = f"{sel['generation_throughput_tps'].mean():.2f}"
    text = tables["article_fast_short.md"]
    assert "Input Tokens: 45" in text and "Output Tokens: 8" in text and "Latency: 2.00 ms" in text
    row = next(line for line in text.splitlines() if line.replace(" ", "").startswith("|2|"))
    assert row.split("|")[2].strip() == expected
    header = next(line for line in text.splitlines() if line.startswith("| Concurrency"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "Concurrency",
        "Generation Throughput (tokens/s)",
        "Prompt Throughput (tokens/s)",
        "Min TTFT (s)",
        "Max TTFT (s)",
        "Repeats",
        "Generation CV",
    ]
    assert row.split("|")[6].strip() == "2"


def test_build_tables_is_deterministic_and_path_free(experiment, tmp_path):
    exp, cfg = experiment
    first = aggregate.build_tables(exp, cfg)
    assert aggregate.build_tables(exp, cfg) == first
    moved = tmp_path / "elsewhere" / "synth"
    shutil.copytree(exp, moved)
    assert aggregate.build_tables(moved, cfg) == first
    assert not any(str(tmp_path) in text for text in first.values())


def test_write_tables_matches_build_and_writes_parquet(experiment):
    exp, cfg = experiment
    written = aggregate.write_tables(exp, cfg)
    built = aggregate.build_tables(exp, cfg)
    for name, text in built.items():
        assert (exp / "tables" / name).read_bytes() == text.encode("utf-8")
    parquet = pd.read_parquet(exp / "tables" / "levels.parquet")
    assert len(parquet) == 12 and list(parquet.columns) == list(tidy.read_levels_csv(exp).columns)
    assert exp / "tables" / "levels.parquet" in written


def test_failed_run_is_flagged_in_every_table(tmp_path):
    cfg = synth_runs.config(repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    synth_runs.write_run(exp, cfg, "fast", 0, 2.0, status="failed")
    tables = aggregate.build_tables(exp, cfg)
    levels = pd.read_csv(io.StringIO(tables["levels.csv"]))
    assert levels.groupby("arm")["flagged"].all().to_dict() == {"base": False, "fast": True}
    assert set(levels[levels["arm"] == "fast"]["flag_reason"]) == {"run failed: server died"}
    assert "(!) FLAGGED: run failed: server died" in tables["article_fast_short.md"]
    assert "(!)" not in tables["article_base_short.md"]
    assert "| fast (!) |" in tables["kernels.md"]
    assert "1 (!)" in tables["arms_vs_baseline.md"]
    assert "(!)" in tables["vs_published.md"]
    assert "No bound" in tables["decode_efficiency.md"]


def test_kernel_expectation_violation_is_flagged(tmp_path):
    """A real H100 trace (vLLM 0.26, FLASH_ATTN -> FA3 kernels) attributed by kernels.py: the arm that forbids fa3
    is flagged everywhere, the arm that requires it is not."""
    from attnbench.engines import kernels

    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    shutil.copy(FIXTURES / "traces" / "h100-vllm0.26-fa3.trace.json.gz", trace_dir)
    seen = kernels.attribute(trace_dir)
    arms = [
        {"name": "base", "backend": "FLASH_ATTN", "expect_kernels": {"require": [], "forbid": ["fa3"]}},
        {"name": "fast", "backend": "FLASH_ATTN", "expect_kernels": {"require": ["fa3"], "forbid": []}},
    ]
    cfg = synth_runs.config(arms=arms, repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0, kernels=seen)
    synth_runs.write_run(exp, cfg, "fast", 0, 2.0, kernels=seen)
    tables = aggregate.build_tables(exp, cfg)
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in tables["kernels.md"].splitlines()
        if line.startswith("| base") or line.startswith("| fast")
    ]
    assert rows[0][:8] == [
        "base (!)",
        "0",
        "FLASH_ATTN",
        "FLASH_ATTN",
        "fa3 100.0%",
        "5.8%",
        "prefill: fa3 100.0%; decode: fa3 100.0%; mixed: fa3 100.0%",
        "forbid fa3: violated",
    ]
    assert rows[0][8].startswith("kernels: forbidden kernel family fa3 ran: 2738 kernels")
    assert rows[1][0] == "fast" and rows[1][7] == "require fa3: ok" and rows[1][8] == "-"
    levels = pd.read_csv(io.StringIO(tables["levels.csv"]))
    assert levels.groupby("arm")["flagged"].all().to_dict() == {"base": True, "fast": False}
    assert set(levels["expectation"]) == {"violated", "ok"}
    assert "(!) FLAGGED: kernels: forbidden kernel family fa3" in tables["article_base_short.md"]


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(AggregateError, match="no run holds raw records"):
        aggregate.build_tables(tmp_path, synth_runs.config())


def test_missing_runs_are_listed(tmp_path):
    cfg = synth_runs.config(repeats=2)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    # killed before its first level finished: requests recorded, no level yet
    (synth_runs.write_run(exp, cfg, "fast", 0, 1.0) / "levels.jsonl").unlink()
    tables = aggregate.build_tables(exp, cfg)
    assert tables["missing_runs.txt"] == "base/rep1\nfast/rep0\nfast/rep1\n"
    assert "Only one arm" not in tables["arms_vs_baseline.md"]


def test_cli_aggregate_writes_tables(experiment, tmp_path):
    import yaml

    from attnbench.cli import main

    exp, cfg = experiment
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["aggregate", str(exp), "--config", str(cfg_path)]) == 0
    assert (exp / "tables" / "levels.csv").exists() and (exp / "tables" / "levels.parquet").exists()


def test_arm_metadata_is_text_whatever_the_mix(tmp_path):
    # An int next to None would make pandas write "2.0" in a float column; metadata is written as text instead.
    arms = [
        {"name": "base", "backend": "FLASH_ATTN"},
        {"name": "fast", "backend": "FLASH_ATTN", "flash_attn_version": 2},
    ]
    cfg = synth_runs.config(arms=arms, repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    synth_runs.write_run(exp, cfg, "fast", 0, 2.0, logged="TRITON_ATTN")
    lines = aggregate.build_tables(exp, cfg)["levels.csv"].splitlines()
    header = lines[0].split(",")
    col = {name: header.index(name) for name in ("flash_attn_version", "logged_backend", "backend_match")}
    base, fast = lines[1].split(","), lines[-1].split(",")
    assert [base[col["flash_attn_version"]], fast[col["flash_attn_version"]]] == ["", "2"]
    assert [fast[col["logged_backend"]], fast[col["backend_match"]]] == ["TRITON_ATTN", "False"]


def test_damaged_raw_file_is_a_clear_error(experiment):
    exp, cfg = experiment
    with (exp / "runs" / "fast" / "rep1" / "records.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(AggregateError, match=r"raw records unreadable: .*fast/rep1/records.jsonl:\d+: not JSON"):
        aggregate.build_tables(exp, cfg)


def test_level_artifacts_are_flagged_in_cells_and_listed_not_dropped(tmp_path):
    """A server that streams its first token (0.5 ms at speed 100) faster than the latency probe answers (2 ms): the
    article's prompt-throughput denominator is negative at every level. The cells say so, flags.md lists each level,
    the comparison of prompt throughput carries the code and generation throughput does not."""
    cfg = synth_runs.config(repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "base", 0, 1.0)
    synth_runs.write_run(exp, cfg, "fast", 0, 100.0)
    tables = aggregate.build_tables(exp, cfg)
    levels = pd.read_csv(io.StringIO(tables["levels.csv"]))
    fast = levels[levels["arm"] == "fast"]
    assert fast["prompt_throughput_tps"].isna().all() and fast["artifacts"].str.startswith("prompt_formula").all()
    assert levels[levels["arm"] == "base"]["artifacts"].isna().all()  # empty text reads back as NaN
    row = next(line for line in tables["article_fast_short.md"].splitlines() if line.replace(" ", "").startswith("|1|"))
    assert "n/a [prompt_formula]" in row
    assert "[prompt_formula] article prompt throughput undefined" in tables["article_fast_short.md"]
    flags = tables["flags.md"]
    assert "prompt_formula 3" in flags  # 3 levels of the fast run
    assert flags.count("| prompt_formula |") == 3 and "latency probe 2.00 ms >= first-wave max TTFT 0.50 ms" in flags
    comp = pd.read_csv(io.StringIO(tables["comparisons.csv"]), dtype={"flags": str})
    by_metric = comp.groupby("metric")["flags"].apply(lambda f: set(f.fillna("")))
    assert by_metric["prompt_throughput_tps"] == {"prompt_formula"}
    assert by_metric["generation_throughput_tps"] == {""}
    assert "n/a [prompt_formula]" in tables["vs_published.md"]


def test_vs_published_csv_always_has_its_header(tmp_path):
    cfg = synth_runs.config(arms=[{"name": "a"}, {"name": "b"}], repeats=1)
    exp = tmp_path / "synth"
    synth_runs.write_run(exp, cfg, "a", 0, 1.0)
    text = aggregate.build_tables(exp, cfg)["vs_published.csv"]
    assert text.splitlines() == [",".join(tabletext.VS_PUBLISHED_COLUMNS)]


def test_format_1_tables_are_rebuilt_as_format_1(experiment):
    """A folder whose tables carry no tables_format.txt (a bundle made before format 2) is recomputed the old way, so
    `attnbench verify` still accepts it; write_tables always writes the current format."""
    exp, cfg = experiment
    from attnbench.analysis import tables_v1

    (exp / "tables").mkdir()
    (exp / "tables" / "levels.csv").write_text("old\n", encoding="utf-8")
    assert aggregate.tables_format_of(exp) == 1
    old = aggregate.build_tables(exp, cfg)
    assert old == tables_v1.build_tables(exp, cfg) and "tables_format.txt" not in old
    assert "artifacts" not in old["levels.csv"].splitlines()[0]
    aggregate.write_tables(exp, cfg)
    assert aggregate.tables_format_of(exp) == aggregate.TABLES_FORMAT
    (exp / "tables" / "tables_format.txt").write_text("two\n", encoding="utf-8")
    with pytest.raises(AggregateError, match="expected a format number"):
        aggregate.build_tables(exp, cfg)


def test_build_tables_reads_the_runs_once(experiment, monkeypatch):
    """The run folders are read once per build (they were read twice: once for the tidy frame, once for the kernel
    and flag tables), and the frame is built from those very runs."""
    exp, cfg = experiment
    calls = []
    real = aggregate.load_runs

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(aggregate, "load_runs", counting)
    monkeypatch.setattr(runinfo, "load_runs", counting)
    tables = aggregate.build_tables(exp, cfg)
    assert len(calls) == 1 and "comparisons.csv" in tables and "kernels.md" in tables


@pytest.mark.parametrize("command", ["aggregate", "plots", "report", "bundle", "verify", "compare"])
def test_analysis_and_bundle_commands_describe_themselves(command, capsys):
    """`attnbench <cmd> --help` says in one sentence what the command does; the commands that work on one
    experiment folder take it the same way (EXP_DIR, --config), as the Snakemake rules call them."""
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: attnbench {command}")
    assert description[0].isupper() and description.rstrip().endswith(".") and "positional" not in description
    if command in ("aggregate", "plots", "report", "bundle"):
        assert "--config CONFIG" in usage and usage.rstrip().endswith("EXP_DIR")
