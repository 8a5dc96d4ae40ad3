"""The measurement core against a real vLLM CPU server (tiny synthetic model, dummy weights)."""

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from attnbench.config import Workload
from attnbench.errors import SweepError
from attnbench.measure.metrics import read_run
from attnbench.measure.records import read_levels, read_requests
from attnbench.measure.sweep import run_sweep

pytestmark = pytest.mark.engine
IDS = dict(experiment="t", arm="cpu", repeat=0)


def sweep(srv, workloads, out, **cfg):
    base = {"warmup_requests": 1, "requests_per_level": 4, "request_timeout_s": 120}
    return asyncio.run(run_sweep(srv.base_url, srv.model, workloads, {**base, **cfg}, out, **IDS))


def test_prompt_and_completion_counts_hit_their_targets(engine_server, tmp_path):
    summary = sweep(engine_server, [Workload("short", 45, 16, [1, 2]), Workload("mid", 500, 8, [2])], tmp_path)
    records = read_requests(tmp_path / "records.jsonl")
    assert len(records) == 3 * (1 + 4) and summary.n_failed == 0
    for r in records:
        assert r.ok, r.error
        assert r.prompt_tokens == (45 if r.workload == "short" else 500)
        assert r.completion_tokens == (16 if r.workload == "short" else 8)  # ignore_eos: exactly max_tokens
        assert r.ttft is not None and r.ttft > 0
    assert len({r.prompt_seed for r in records}) == len(records)  # no two requests share a prompt
    levels = read_levels(tmp_path / "levels.jsonl")
    assert [(lv.workload, lv.concurrency, lv.complete, len(lv.latency_ms)) for lv in levels] == [
        ("short", 1, True, 5),
        ("short", 2, True, 5),
        ("mid", 2, True, 5),
    ]


def test_completions_api_counts_exactly(engine_server, tmp_path):
    sweep(engine_server, [Workload("short", 45, 8, [1])], tmp_path, api="completions")
    assert {(r.prompt_tokens, r.completion_tokens, r.ok) for r in read_requests(tmp_path / "records.jsonl")} == {
        (45, 8, True)
    }


def test_impossible_target_is_a_clear_error(engine_server, tmp_path):
    with pytest.raises(SweepError, match="below the minimum"):
        sweep(engine_server, [Workload("tiny", 5, 8, [1])], tmp_path)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "attnbench.cli", "sweep", *args], capture_output=True, text=True, **kw)


def test_cli_summary_equals_recomputation_from_raw_files(engine_server, tmp_path):
    out = tmp_path / "run"
    proc = _cli(
        "--base-url",
        engine_server.base_url,
        "--model",
        engine_server.model,
        "--workload",
        "short=45:16",
        "--concurrency",
        "1,3",
        "--requests",
        "6",
        "--warmup",
        "1",
        "--output",
        str(out),
        "--summary-json",
        str(tmp_path / "summary.json"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "short c=3: 6/6 done, 0 failed" in proc.stderr
    reported = json.loads((tmp_path / "summary.json").read_text())
    recomputed = read_run(out).to_dict(orient="records")
    assert len(reported) == 2
    for rep, rec in zip(reported, recomputed):
        assert rep.keys() == rec.keys()
        for key in rep:
            same = rep[key] == rec[key] or (
                isinstance(rec[key], float) and math.isnan(rec[key]) and math.isnan(rep[key])
            )
            assert same, (key, rep[key], rec[key])
    # the printed table carries the same numbers (rounded)
    assert f"{reported[1]['generation_throughput_tps']:.4g}" in proc.stdout


def test_killed_server_yields_failed_records_kept_data_and_nonzero_exit(start_engine_server, tmp_path):
    out = tmp_path / "run"
    with start_engine_server() as srv:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "attnbench.cli",
                "sweep",
                "--base-url",
                srv.base_url,
                "--model",
                srv.model,
                "--workload",
                "short=45:32",
                "--concurrency",
                "2",
                "--requests",
                "400",
                "--warmup",
                "0",
                "--output",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        records = out / "records.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if records.exists() and len(records.read_text().splitlines()) >= 4:
                break
            time.sleep(0.2)
        os.kill(srv.server.pid, signal.SIGKILL)  # the API server dies mid-level, as under the OOM killer
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "attnbench sweep: error: sweep aborted at short concurrency 2: server unreachable" in stderr
    kept = read_requests(records)
    assert len(kept) == 400  # every planned request has a record
    ok = [r for r in kept if r.ok]
    failed = [r for r in kept if not r.ok]
    assert len(ok) >= 4 and all(r.completion_tokens == 32 for r in ok)
    assert failed and all(r.error for r in failed)
    assert any(r.error.startswith("not sent: server unreachable") for r in failed)
    (level,) = read_levels(out / "levels.jsonl")
    assert level.complete is False and level.failed == len(failed)
    assert "short" in stdout  # the summary of what was kept is still printed
