"""Levels sized by time against the real vLLM CPU server: a level runs its request count and at least
min_level_seconds, its warm-up at least warmup_seconds, and every request still gets its own prompt."""

import asyncio

import pytest

from attnbench.config import Workload
from attnbench.measure.records import read_levels, read_requests
from attnbench.measure.sweep import run_sweep

pytestmark = pytest.mark.engine


def test_level_and_warmup_last_their_floors(engine_server, tmp_path):
    cfg = {
        "warmup_requests": 1,
        "requests_per_level": 2,
        "request_timeout_s": 120,
        "min_level_seconds": 3.0,
        "warmup_seconds": 1.0,
    }
    asyncio.run(
        run_sweep(
            engine_server.base_url,
            engine_server.model,
            [Workload("short", 45, 8, [1, 2])],
            cfg,
            tmp_path,
            experiment="t",
            arm="cpu",
            repeat=0,
        )
    )
    records = read_requests(tmp_path / "records.jsonl")
    levels = read_levels(tmp_path / "levels.jsonl")
    assert all(r.ok for r in records)
    assert len({r.prompt_seed for r in records}) == len(records)  # extra prompts are new prompts too
    for lv in levels:
        measured = [r for r in records if r.phase == "measure" and r.concurrency == lv.concurrency]
        warm = [r for r in records if r.phase == "warmup" and r.concurrency == lv.concurrency]
        # the count is a floor, time extends it: 8-token requests take well under a second on this model
        assert lv.requests == len(measured) > 2 and lv.warmup == len(warm) >= 1
        # The floor is checked on the loop's clock just before each send; the records' stamps are taken inside the
        # client, microseconds apart from those checks (a run measured 0.99996 s for a 1 s floor): 1 ms of slack.
        assert lv.end - lv.start >= 3.0 - 0.001
        assert max(r.end for r in warm) - min(r.start for r in warm) >= 1.0 - 0.001
        # the first wave (index < N) still opens the level together, as the article's prompt throughput needs
        assert sorted(r.index for r in measured)[: lv.concurrency] == list(range(lv.concurrency))
