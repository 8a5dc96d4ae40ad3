"""Metrics on hand-made records, against values computed by hand (see the comments)."""

import math

import pytest

from attnbench.measure.metrics import (
    ARTICLE_COLUMNS,
    ARTIFACT_COLUMNS,
    KEY_COLUMNS,
    MODERN_COLUMNS,
    artifact_codes,
    level_table,
    read_run,
)
from attnbench.measure.records import LevelRecord, RequestRecord, append_jsonl

BASE = dict(experiment="e", arm="a", repeat=0, workload="short", concurrency=2)


def req(index, start, end, ttft, itl, prompt, completion, ok=True, phase="measure"):
    return RequestRecord(
        **BASE,
        phase=phase,
        index=index,
        request_id=f"r{index}{phase}",
        start=start,
        end=end,
        ttft=ttft,
        itl=itl,
        prompt_tokens=prompt,
        completion_tokens=completion,
        http_status=200 if ok else 500,
        ok=ok,
        error=None if ok else "HTTP 500: boom",
    )


RECORDS = [
    req(0, 100.0, 104.0, 0.5, [0.1, 0.2], 45, 10),
    req(1, 100.0, 106.0, 1.0, [0.3], 45, 10),
    req(2, 104.0, 110.0, 0.25, [], 45, 20),
    req(3, 106.0, 106.5, None, [], None, None, ok=False),
    req(0, 90.0, 99.0, 9.0, [5.0], 45, 10, phase="warmup"),  # excluded everywhere
]
LEVEL = LevelRecord(
    **BASE, requests=4, warmup=1, start=100.0, end=110.0, latency_ms=[2.0, 1.0, 3.0, 2.0, 2.0], failed=1
)


def test_hand_computed_values():
    row = level_table(RECORDS, [LEVEL]).iloc[0]
    expected = {
        "latency_ms": 2.0,
        "generation_throughput_tps": 40 / (10 - 0.002),  # completion tokens of ok requests / (window - latency)
        "prompt_throughput_tps": 90 / (1.0 - 0.002),  # first wave = index 0,1: 45+45 over their max TTFT - latency
        "min_ttft_s": 0.25,
        "max_ttft_s": 1.0,
        "request_throughput_rps": 0.3,
        "output_throughput_tps": 4.0,
        "total_throughput_tps": 17.5,  # (135 + 40) / 10
        "duration_s": 10.0,
        "n_ok": 3,
        "n_failed": 1,
        "success_rate": 0.75,
        "prompt_tokens_mean": 45.0,
        "completion_tokens_mean": 40 / 3,
        "ttft_ms_mean": 1750 / 3,
        "ttft_ms_median": 500.0,
        "ttft_ms_p90": 900.0,  # sorted 250, 500, 1000; linear at 1.8
        "ttft_ms_p99": 990.0,
        "tpot_ms_mean": (3500 / 9 + 5000 / 9 + 5750 / 19) / 3,  # (e2e - ttft) / (tokens - 1)
        "tpot_ms_median": 3500 / 9,
        "itl_ms_mean": 200.0,
        "itl_ms_median": 200.0,
        "itl_ms_p90": 280.0,
        "itl_ms_p99": 298.0,
        "e2el_ms_mean": 16000 / 3,
        "e2el_ms_median": 6000.0,
        "e2el_ms_p99": 6000.0,
    }
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12), key


def test_columns_and_dtypes_are_fixed():
    frame = level_table(RECORDS, [LEVEL])
    assert list(frame.columns) == KEY_COLUMNS + ARTICLE_COLUMNS + MODERN_COLUMNS + ARTIFACT_COLUMNS
    assert str(frame["n_ok"].dtype) == "int64" and str(frame["concurrency"].dtype) == "int64"
    assert str(frame["ttft_ms_p99"].dtype) == "float64"


def test_goodput_only_with_limits():
    assert "goodput_rps" not in level_table(RECORDS, [LEVEL]).columns
    assert level_table(RECORDS, [LEVEL], ttft_limit_ms=600).iloc[0]["goodput_rps"] == pytest.approx(0.2)
    assert level_table(RECORDS, [LEVEL], ttft_limit_ms=600, tpot_limit_ms=350).iloc[0]["goodput_rps"] == pytest.approx(
        0.1
    )


def test_all_failed_level_gives_nan_not_an_error():
    failed = [req(i, 100.0, 101.0, None, [], None, None, ok=False) for i in range(2)]
    row = level_table(failed, [LEVEL]).iloc[0]
    assert row["n_ok"] == 0 and row["n_failed"] == 2 and row["success_rate"] == 0.0
    assert math.isnan(row["generation_throughput_tps"]) and math.isnan(row["ttft_ms_median"])


def test_rows_sorted_and_recomputation_from_files_is_identical(tmp_path):
    other = LevelRecord(**{**BASE, "concurrency": 1}, requests=1, warmup=0, start=50.0, end=51.0, latency_ms=[1.0])
    one = RequestRecord(
        **{**BASE, "concurrency": 1},
        phase="measure",
        index=0,
        request_id="x",
        start=50.0,
        end=51.0,
        ttft=0.1,
        itl=[0.2],
        prompt_tokens=45,
        completion_tokens=3,
        http_status=200,
        ok=True,
    )
    for r in RECORDS + [one]:
        append_jsonl(tmp_path / "records.jsonl", r)
    for lv in (LEVEL, other):
        append_jsonl(tmp_path / "levels.jsonl", lv)
    frame = level_table(RECORDS + [one], [LEVEL, other])
    assert list(frame["concurrency"]) == [1, 2]
    again = read_run(tmp_path)
    assert again.equals(frame)


# --- artifacts: each flag class from the record pattern that produces it -----------------------------------------


def test_fixture_level_flags_its_failed_request_and_its_one_chunk_stream():
    row = level_table(RECORDS, [LEVEL]).iloc[0]
    # request 2 streamed its 20 tokens in one content chunk (no gaps); request 3 failed.
    assert artifact_codes(row["artifacts"]) == ["single_chunk", "failed_requests"]
    assert row["single_chunk_streams"] == 1
    assert "1 of 4 failed" in row["artifacts"]


def test_real_burst_pattern_of_the_cpu_demo_is_flagged():
    # As recorded by the CPU demo (cpu_attn, short, c=1): 64 tokens, first content after 100.26 ms, the other 63
    # chunks in the same read (gaps 0.249 ms then 0): median TPOT 0.004 ms, which no engine decodes at.
    level = LevelRecord(**BASE, requests=2, warmup=0, start=100.0, end=100.2, latency_ms=[1.08])
    recs = [
        req(i, 100.0 + 0.1 * i, 100.0 + 0.1 * i + 0.100557, 0.10026, [0.000249] + [0.0] * 62, 45, 64) for i in range(2)
    ]
    row = level_table(recs, [level]).iloc[0]
    assert row["tpot_ms_median"] < 0.01
    assert row["single_chunk_streams"] == 2
    assert artifact_codes(row["artifacts"]) == ["single_chunk"] and "2 of 2 streams in one burst" in row["artifacts"]


def test_prompt_formula_breaks_when_the_latency_probe_exceeds_the_first_wave_ttft():
    # A CPU server answering the root GET slower (3 ms) than it streams its first token (2 ms): the article's
    # prompt throughput divides by a negative number. The level keeps its other numbers and says why.
    level = LevelRecord(**BASE, requests=2, warmup=0, start=100.0, end=101.0, latency_ms=[3.0, 3.0])
    recs = [req(i, 100.0, 101.0, 0.002, [0.01] * 9, 45, 10) for i in range(2)]
    row = level_table(recs, [level]).iloc[0]
    assert math.isnan(row["prompt_throughput_tps"])
    assert artifact_codes(row["artifacts"]) == ["prompt_formula"]
    assert "3.00 ms >= first-wave max TTFT 2.00 ms" in row["artifacts"]
    assert row["generation_throughput_tps"] > 0


def test_single_chunk_streams_collapse_tpot_and_are_counted():
    # All 512 tokens arrive in one chunk at the very end: TTFT is the whole response, TPOT (e2e - ttft)/511 ~ 0.
    level = LevelRecord(**BASE, requests=2, warmup=0, start=100.0, end=103.0, latency_ms=[1.0])
    recs = [req(i, 100.0, 103.0, 2.999996, [], 45, 512) for i in range(2)]
    row = level_table(recs, [level]).iloc[0]
    assert row["tpot_ms_median"] < 0.01
    assert row["single_chunk_streams"] == 2
    assert artifact_codes(row["artifacts"]) == ["single_chunk"]


def test_incomplete_level_is_flagged():
    level = LevelRecord(
        **BASE, requests=4, warmup=0, start=100.0, end=101.0, latency_ms=[1.0], failed=2, complete=False
    )
    recs = [req(i, 100.0, 101.0, 0.1, [0.1] * 9, 45, 10) for i in range(2)]
    recs += [req(i, 101.0, 101.0, None, [], None, None, ok=False) for i in (2, 3)]
    row = level_table(recs, [level]).iloc[0]
    assert artifact_codes(row["artifacts"]) == ["failed_requests", "incomplete"]


def test_clean_level_has_no_artifacts():
    level = LevelRecord(**BASE, requests=2, warmup=0, start=100.0, end=101.0, latency_ms=[1.0])
    recs = [req(i, 100.0, 101.0, 0.1, [0.1] * 9, 45, 10) for i in range(2)]
    row = level_table(recs, [level]).iloc[0]
    assert row["artifacts"] == "" and row["single_chunk_streams"] == 0
