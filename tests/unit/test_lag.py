"""The client's own lag (lag.py): a blocked event loop is seen, and a level beyond the limit is flagged from its raw
records, in the level table and in aggregate's tables."""

import asyncio
import math
import time

from synth_runs import config, write_run

from attnbench.analysis import aggregate, tidy
from attnbench.measure.lag import LoopLagMonitor, as_record, lag_columns
from attnbench.measure.metrics import level_table
from attnbench.measure.records import LevelRecord, RequestRecord, append_jsonl, read_levels, read_requests


async def _measure(block_s: float, *, every_s: float = 0.05, total_s: float = 0.6):
    """Run a monitor while a task blocks the loop with time.sleep(block_s) every `every_s`."""
    mon = LoopLagMonitor(interval_s=0.005, limit_ms=10)
    mon.start()
    end = time.perf_counter() + total_s
    while time.perf_counter() < end:
        stop = time.perf_counter() + block_s
        while time.perf_counter() < stop:  # busy: what a CPU-bound client does to its own loop
            pass
        await asyncio.sleep(every_s)
    return await mon.stop()


def test_blocked_loop_is_measured_and_flagged():
    quiet = asyncio.run(_measure(0.0))
    blocked = asyncio.run(_measure(0.04))
    assert blocked.loop_samples > 5 and quiet.loop_samples > 20
    # a 40 ms sleep inside the loop delays a 5 ms timer by up to ~40 ms; a quiet loop by about a millisecond
    assert blocked.loop_lag_ms_max >= 30, blocked
    # medians and CPU share, not the quiet loop's tail: on a shared machine other processes may delay any timer
    assert blocked.loop_lag_ms_p99 > 10 and quiet.loop_lag_ms_p50 < 5, (blocked, quiet)
    # the busy wait is most of the wall time (less only when the machine's other processes take the core)
    assert blocked.cpu_pct > 20 and blocked.cpu_pct > 3 * quiet.cpu_pct, (blocked, quiet)
    assert lag_columns(as_record(blocked), [])["client_lagged"] is True


def _level(client):
    return LevelRecord("e", "a", 0, "w", 1, requests=2, warmup=0, start=10.0, end=12.0, client=client)


def _req(i, scheduled, start):
    return RequestRecord(
        "e",
        "a",
        0,
        "w",
        1,
        "measure",
        i,
        f"r{i}",
        start=start,
        end=start + 1,
        ttft=0.1,
        completion_tokens=4,
        prompt_tokens=4,
        ok=True,
        http_status=200,
        scheduled=scheduled,
    )


def test_send_lag_from_raw_records_flags_the_level():
    client = {"loop_lag_ms_p50": 0.2, "loop_lag_ms_p99": 0.5, "loop_lag_ms_max": 0.6, "cpu_pct": 20.0, "limit_ms": 10}
    on_time = level_table([_req(0, 10.0, 10.001), _req(1, 11.0, 11.002)], [_level(client)]).iloc[0]
    late = level_table([_req(0, 10.0, 10.001), _req(1, 11.0, 11.030)], [_level(client)]).iloc[0]
    assert not on_time["client_lagged"] and late["client_lagged"]  # same loop lag; only the send lag differs
    assert math.isclose(late["client_send_lag_ms_max"], 30.0, abs_tol=1e-3)
    assert math.isclose(on_time["client_send_lag_ms_p50"], 1.5, abs_tol=1e-3)
    # a level without a client record (made before lag.py) keeps the old columns only
    assert "client_lagged" not in level_table([_req(0, None, 10.0)], [_level(None)])


def test_lagged_level_is_flagged_in_aggregate_tables(tmp_path):
    cfg = config(repeats=1)
    for arm, speed in (("base", 1.0), ("fast", 2.0)):
        rdir = write_run(tmp_path, cfg, arm, 0, speed)
        # rewrite the levels with client records: arm fast lagged at short c=2
        levels = read_levels(rdir / "levels.jsonl")
        (rdir / "levels.jsonl").unlink()
        for lv in levels:
            bad = arm == "fast" and lv.workload == "short" and lv.concurrency == 2
            lv.client = {
                "loop_lag_ms_p50": 1.0,
                "loop_lag_ms_p99": 25.0 if bad else 1.0,
                "loop_lag_ms_max": 30.0,
                "cpu_pct": 97.0,
                "limit_ms": 10,
            }
            append_jsonl(rdir / "levels.jsonl", lv)
        assert read_requests(rdir / "records.jsonl")
    frame = tidy.levels_frame(tmp_path, cfg)
    flagged = frame[frame["flagged"]]
    assert [(r.arm, r.workload, r.concurrency) for r in flagged.itertuples()] == [("fast", "short", 2)]
    assert "client lagged (event-loop p99 25.0 ms" in flagged.iloc[0]["flag_reason"]
    tables = aggregate.build_tables(tmp_path, cfg)
    assert "client lagged" in tables["article_fast_short.md"]
    assert "client lagged" not in tables["article_base_short.md"]


def test_merged_load_takes_the_worst_loop_and_all_cpu():
    from attnbench.measure.lag import ClientLoad, merge_loads

    def load(p99, cpu, samples=100):
        return ClientLoad(1.0, p99, p99 + 1, samples, 10.0, cpu, 2.0, cpu / 2 * 100, 10.0)

    merged = merge_loads(load(0.5, 0.2), [load(3.0, 1.0), load(12.0, 1.5)])
    assert (merged.loop_lag_ms_p99, merged.loop_lag_ms_max, merged.processes) == (12.0, 13.0, 3)
    assert merged.cpu_s == 2.7 and merged.cpu_pct == 135.0  # more than one core: the point of several processes
    assert merge_loads(load(0.5, 0.2), []) == load(0.5, 0.2)
