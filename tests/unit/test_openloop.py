"""Open-loop schedules and the per-rate table from raw records (the sends themselves run against the real engine in
tests/integration/test_engine_openloop.py)."""

import math

import numpy as np
import pytest

from attnbench.errors import SweepError
from attnbench.measure.openloop import level_table, parse_rates, requests_for_rate, schedule
from attnbench.measure.records import LevelRecord, RequestRecord


def test_schedules_end_at_n_over_rate_and_keep_their_shape():
    rng = np.random.default_rng(0)
    const = schedule(10, 2.0, "constant", 1.0, rng)
    assert const == pytest.approx([0.5 * (i + 1) for i in range(10)])
    poisson = schedule(2000, 4.0, "poisson", 1.0, np.random.default_rng(1))
    assert poisson[-1] == pytest.approx(500.0)  # rescaled like vLLM: last send at n / rate
    gaps = np.diff([0.0] + poisson)
    assert np.all(gaps >= 0)
    # exponential gaps: coefficient of variation 1; gamma shape k: 1/sqrt(k)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.08)
    bursty = np.diff([0.0] + schedule(2000, 4.0, "gamma", 0.25, np.random.default_rng(1)))
    assert np.std(bursty) / np.mean(bursty) == pytest.approx(2.0, abs=0.2)
    assert schedule(5, 1.0, "poisson", 1.0, np.random.default_rng(7)) == schedule(
        5, 1.0, "poisson", 1.0, np.random.default_rng(7)
    )


def test_bad_schedule_input_is_a_clear_error():
    with pytest.raises(SweepError, match="arrival must be one of"):
        schedule(3, 1.0, "uniform", 1.0, np.random.default_rng(0))
    with pytest.raises(SweepError, match="positive number"):
        schedule(3, 0.0, "poisson", 1.0, np.random.default_rng(0))
    with pytest.raises(SweepError, match="rates must be positive"):
        parse_rates("1,-2")
    assert parse_rates("0.5, 2") == [0.5, 2.0]
    assert requests_for_rate(2.0, {"duration_s": 30}) == 60 and requests_for_rate(2.0, {"requests_per_rate": 7}) == 7


def test_level_table_achieved_rate_goodput_and_send_lag_from_records():
    origin = 1000.0
    recs = []
    for i in range(4):  # scheduled every 0.5 s; request 3 left 40 ms late; TTFT 0.1 s except request 2 (0.5 s)
        sched = origin + 0.5 * (i + 1)
        start = sched + (0.04 if i == 3 else 0.001)
        ttft = 0.5 if i == 2 else 0.1
        recs.append(
            RequestRecord(
                "e",
                "a",
                0,
                "w",
                0,
                "measure",
                i,
                f"x{i}",
                start=start,
                end=start + 1.0,
                ttft=ttft,
                itl=[0.1] * 8,
                prompt_tokens=10,
                completion_tokens=10,
                http_status=200,
                ok=True,
                scheduled=sched,
                rate=2.0,
            )
        )
    level = LevelRecord(
        "e",
        "a",
        0,
        "w",
        0,
        requests=4,
        warmup=0,
        start=recs[0].start,
        end=recs[-1].end,
        rate=2.0,
        client={"loop_lag_ms_p99": 0.3, "limit_ms": 10, "cpu_pct": 5.0},
        open_loop={
            "arrival": "poisson",
            "burstiness": 1.0,
            "origin": origin,
            "ttft_limit_ms": 200,
            "tpot_limit_ms": None,
        },
    )
    other = LevelRecord("e", "a", 0, "w", 0, requests=0, warmup=0, start=0, end=0, rate=4.0, open_loop={})
    table = level_table(recs, [other, level])
    assert list(table["rate"]) == [2.0, 4.0]  # sorted by rate
    row = table.iloc[0]
    assert row["sent"] == 4 and math.isclose(row["achieved_rate_rps"], 4 / (2.0 + 0.04))
    assert math.isclose(row["goodput_rps"], 3 / (recs[-1].end - recs[0].start))  # request 2 misses the TTFT limit
    assert math.isclose(row["client_send_lag_ms_max"], 40.0, abs_tol=1e-6) and bool(row["client_lagged"])


def _level_of(rate, ttfts, late_s=0.0, ok=True, limit=200):
    origin, recs = 1000.0, []
    for i, ttft in enumerate(ttfts):
        sched = origin + (i + 1) / rate
        start = sched + (late_s if i == len(ttfts) - 1 else 0.0)
        recs.append(
            RequestRecord(
                "e",
                "a",
                0,
                "w",
                0,
                "measure",
                i,
                f"x{i}",
                start=start,
                end=start + 1.0,
                ttft=ttft,
                prompt_tokens=10,
                completion_tokens=10,
                http_status=200,
                ok=ok,
                scheduled=sched,
                rate=rate,
                error=None if ok else "HTTP 500: x",
            )
        )
    level = LevelRecord(
        "e",
        "a",
        0,
        "w",
        0,
        requests=len(recs),
        warmup=0,
        start=recs[0].start,
        end=recs[-1].end,
        rate=rate,
        open_loop={"origin": origin, "ttft_limit_ms": limit},
    )
    return level, recs


def test_knee_breaks_on_failures_lagging_sends_or_missed_limits():
    from attnbench.measure.openloop import breaks

    assert breaks(*_level_of(2.0, [0.05] * 20)) is None
    assert "failed" in breaks(*_level_of(2.0, [0.05] * 20, ok=False))
    assert "achieved" in breaks(*_level_of(2.0, [0.05] * 20, late_s=2.0))  # last send 2 s late: 20 in 12 s
    assert "met the TTFT/TPOT limits" in breaks(*_level_of(2.0, [0.05] * 17 + [0.5] * 3))  # 85% < 90%
    assert breaks(*_level_of(2.0, [0.05] * 19 + [0.5])) is None  # 95%
