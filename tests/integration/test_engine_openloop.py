"""Open-loop load and the client's own lag against a real vLLM CPU server (tiny synthetic model)."""

import asyncio
import json
import math
import re
import subprocess
import sys
import time

import pytest

from attnbench.config import Workload
from attnbench.measure.metrics import read_run as read_closed_run
from attnbench.measure.openloop import read_run
from attnbench.measure.records import read_levels, read_requests
from attnbench.measure.sweep import run_sweep

pytestmark = pytest.mark.engine


def test_poisson_at_two_rates_hits_its_targets_and_recomputes_from_raw_files(engine_server, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnbench.cli",
            "open-loop",
            "--base-url",
            engine_server.base_url,
            "--model",
            engine_server.model,
            "--workload",
            "short=45:8",
            "--rates",
            "2,5",
            "--requests",
            "60",
            "--warmup",
            "1",
            "--ttft-limit-ms",
            "500",
            "--output",
            str(out),
            "--summary-json",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    records = [r for r in read_requests(out / "openloop.jsonl") if r.phase == "measure"]
    assert len(records) == 120 and all(r.ok for r in records), [r.error for r in records if not r.ok][:3]
    assert all(r.scheduled is not None and r.start >= r.scheduled - 0.001 for r in records)
    levels = read_levels(out / "openloop_levels.jsonl")
    assert [(lv.rate, lv.open_loop["arrival"]) for lv in levels] == [(2.0, "poisson"), (5.0, "poisson")]
    reported = json.loads((tmp_path / "s.json").read_text())
    recomputed = read_run(out).to_dict(orient="records")
    assert len(reported) == 2 and [r["rate"] for r in reported] == [2.0, 5.0]
    for rep, rec in zip(reported, recomputed):
        assert rep.keys() == rec.keys()
        for key in rep:
            same = rep[key] == rec[key] or (
                isinstance(rec[key], float) and math.isnan(rec[key]) and math.isnan(rep[key])
            )
            assert same, (key, rep[key], rec[key])
        # achieved rate from the actual send times of 60 requests, against the target
        assert abs(rec["achieved_rate_rps"] / rec["rate"] - 1) < 0.05, rec
        assert rec["n_ok"] == 60 and not math.isnan(rec["goodput_rps"]) and rec["client_send_lag_ms_p50"] < 10
    # the gaps really are random (Poisson), not a constant pace
    starts = sorted(r.scheduled for r in records if r.rate == 5.0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) > 2 * min(gaps) + 0.1


async def _busy_loop_while(task: asyncio.Task, block_s: float, every_s: float) -> None:
    while not task.done():
        stop = time.perf_counter() + block_s
        while time.perf_counter() < stop:  # a CPU-bound client starving its own event loop
            pass
        await asyncio.sleep(every_s)


def test_blocked_event_loop_flags_the_level(engine_server, tmp_path):
    async def main():
        sweep = asyncio.create_task(
            run_sweep(
                engine_server.base_url,
                engine_server.model,
                [Workload("short", 45, 8, [2])],
                {"warmup_requests": 0, "requests_per_level": 6, "latency_probe_gets": 1},
                tmp_path / "run",
                experiment="t",
                arm="cpu",
                repeat=0,
            )
        )
        await _busy_loop_while(sweep, block_s=0.05, every_s=0.02)
        return await sweep

    asyncio.run(main())
    level = read_levels(tmp_path / "run" / "levels.jsonl")[0]
    assert level.client["loop_lag_ms_p99"] > level.client["limit_ms"] == 10
    row = read_closed_run(tmp_path / "run").iloc[0]
    assert bool(row["client_lagged"]) and row["client_loop_lag_ms_max"] >= 40


def test_server_metrics_scraped_into_the_run_folder_and_summarized(engine_server, tmp_path):
    from attnbench.measure import openloop, servermetrics
    from attnbench.measure.openloop import run_open_loop

    run_dir = tmp_path / "exp" / "runs" / "cpu" / "rep0"
    ids = dict(experiment="t", arm="cpu", repeat=0)
    sweep_cfg = {"warmup_requests": 1, "requests_per_level": 6, "latency_probe_gets": 1}

    async def main(scraper):
        await run_sweep(
            engine_server.base_url,
            engine_server.model,
            [Workload("short", 45, 16, [1, 4])],
            sweep_cfg,
            run_dir,
            on_level=scraper.mark,
            **ids,
        )
        await run_open_loop(
            engine_server.base_url,
            engine_server.model,
            [(Workload("short", 45, 16, []), [4.0])],
            sweep_cfg,
            {"requests_per_rate": 12},
            run_dir,
            on_level=scraper.mark,
            **ids,
        )

    with servermetrics.Scraper(engine_server.base_url, run_dir / servermetrics.FILE, interval_s=0.5) as scraper:
        asyncio.run(main(scraper))
    scrapes = servermetrics.read(run_dir / servermetrics.FILE)
    assert all(s["ok"] for s in scrapes), [s["error"] for s in scrapes if not s["ok"]][:2]
    assert {s["event"] for s in scrapes} == {"start", "end", "interval"}
    levels = servermetrics.summarize(scrapes)
    assert [(lv["workload"], lv["concurrency"], lv["rate"]) for lv in levels] == [
        ("short", 1, None),
        ("short", 4, None),
        ("short", None, 4.0),
    ]
    for lv in levels:
        # the server counted exactly our measured requests' tokens between the level's start and end scrapes
        assert lv["generation_tokens"] == 16 * (12 if lv["rate"] else 6), lv
        assert lv["server_ttft_ms_mean"] > 0 and lv["kv_cache_usage_max"] is not None
    open_start = next(s["t"] for s in scrapes if s["event"] == "start" and s["level"].get("rate"))
    assert any(s["event"] == "interval" and s["t"] > open_start for s in scrapes)  # 12 requests at 4/s: ~3 s
    section = servermetrics.report_section(tmp_path / "exp")
    assert "| short c=4 |" in section and "| short rate 4/s |" in section and "server TTFT ms" in section
    assert re.search(r"\| short( \(!\))? \| 4 \| ", openloop.report_section(tmp_path / "exp"))  # (!) if we lagged


def test_two_client_processes_merge_into_one_record_stream(engine_server, tmp_path):
    out = tmp_path / "run"
    asyncio.run(
        run_sweep(
            engine_server.base_url,
            engine_server.model,
            [Workload("short", 45, 8, [1, 5])],
            {"warmup_requests": 1, "requests_per_level": 10, "client_processes": 2, "latency_probe_gets": 1},
            out,
            experiment="t",
            arm="cpu",
            repeat=0,
        )
    )
    measured = [r for r in read_requests(out / "records.jsonl") if r.phase == "measure"]
    assert len(measured) == 20 and all(r.ok and r.completion_tokens == 8 for r in measured)
    for conc in (1, 5):
        ids = sorted(r.index for r in measured if r.concurrency == conc)
        assert ids == list(range(10))  # every prompt once, from whichever process sent it
    levels = read_levels(out / "levels.jsonl")
    # c=1 runs in one worker, c=5 in both (3 + 2 in flight); the parent counts as a process too
    assert [lv.client["processes"] for lv in levels] == [2, 3]
    assert all(lv.client["cpu_s"] > 0 for lv in levels)
    assert read_closed_run(out)["n_ok"].tolist() == [10, 10]


def test_in_flight_cap_holds_requests_back_as_send_lag(engine_server, tmp_path):
    from attnbench.measure.openloop import run_open_loop

    # 100 requests/s offered, one in flight at a time: each waits for the previous one to finish
    asyncio.run(
        run_open_loop(
            engine_server.base_url,
            engine_server.model,
            [(Workload("short", 45, 16, []), [100.0])],
            {"warmup_requests": 0},
            {"requests_per_rate": 12, "max_in_flight": 1, "arrival": "constant"},
            tmp_path,
            experiment="t",
            arm="cpu",
            repeat=0,
        )
    )
    records = sorted(read_requests(tmp_path / "openloop.jsonl"), key=lambda r: r.start)
    assert len(records) == 12 and all(r.ok and r.concurrency == 1 for r in records)
    assert all(a.end <= b.start + 0.001 for a, b in zip(records, records[1:]))  # never two in flight
    row = read_run(tmp_path).iloc[0]
    assert row["max_in_flight"] == 1 and row["sent"] == 12
    # a request takes longer than the 10 ms schedule gap on this engine, so the cap makes the client send late
    # (at 40/s, a 25 ms gap, a request of about 27 ms left too little lag to show once the client got faster)
    assert row["client_send_lag_ms_max"] > 10 and bool(row["client_lagged"])
    assert row["achieved_rate_rps"] < 100


def test_knee_mode_doubles_the_rate_until_a_level_breaks(engine_server, tmp_path):
    from attnbench.measure.openloop import breaks

    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnbench.cli",
            "open-loop",
            "--base-url",
            engine_server.base_url,
            "--model",
            engine_server.model,
            "--workload",
            "short=45:16",
            "--rates",
            "4",
            "--requests",
            "12",
            "--warmup",
            "0",
            "--ttft-limit-ms",
            "40",
            "--knee",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    levels = read_levels(out / "openloop_levels.jsonl")
    records = read_requests(out / "openloop.jsonl")
    rates = [lv.rate for lv in levels]
    assert rates == [4.0 * 2**i for i in range(len(rates))] and 1 <= len(rates) <= 8
    verdicts = [breaks(lv, [r for r in records if r.rate == lv.rate and r.phase == "measure"]) for lv in levels]
    assert all(v is None for v in verdicts[:-1])  # every rate but the last held
    assert verdicts[-1] is not None or len(rates) == 8
    if verdicts[-1]:
        assert f"the knee is below {rates[-1]:g}/s" in proc.stderr
