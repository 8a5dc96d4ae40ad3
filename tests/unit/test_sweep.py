"""Sweep command-line parsing and guards (the sweep itself runs against the real engine in tests/integration)."""

import asyncio
import time

import pytest

from attnbench.cli import main
from attnbench.config import Workload
from attnbench.errors import SweepError
from attnbench.measure.loadcli import parse_concurrency, parse_workload
from attnbench.measure.records import RequestRecord, append_jsonl
from attnbench.measure.sweep import (
    expected_requests,
    requests_for,
    run_sweep,
)


def test_parse_workload_spec_and_names():
    assert parse_workload("short=45:512", {}) == Workload("short", 45, 512, ())
    known = {"long": Workload("long", 2771, 512, [1, 2, 4])}
    assert parse_workload("long", known) is known["long"]
    with pytest.raises(SweepError, match="expected NAME=PROMPT_TOKENS:OUTPUT_TOKENS"):
        parse_workload("short=45", {})
    with pytest.raises(SweepError, match=r"known: \['long'\]"):
        parse_workload("medium", known)
    with pytest.raises(SweepError, match="must be positive"):
        parse_workload("short=0:5", {})


def test_parse_concurrency():
    assert parse_concurrency("1,2, 4") == [1, 2, 4]
    for bad in ("", "1,x", "0,2"):
        with pytest.raises(SweepError):
            parse_concurrency(bad)


def test_requests_per_level_default():
    assert [requests_for(n, {"requests_per_level": None}) for n in (1, 4, 8, 32)] == [16, 16, 32, 128]
    assert requests_for(8, {"requests_per_level": 5}) == 5
    assert requests_for(8, {"waves_per_level": 2, "min_requests_per_level": 4}) == 16
    assert requests_for(1, {"waves_per_level": 2, "min_requests_per_level": 4}) == 4


def test_refuses_a_folder_with_records(tmp_path):
    append_jsonl(tmp_path / "records.jsonl", RequestRecord("e", "a", 0, "w", 1, "measure", 0, "x", start=1.0))
    with pytest.raises(SweepError, match="already holds records"):
        asyncio.run(
            run_sweep(
                "http://127.0.0.1:9", "m", [Workload("w", 45, 8, [1])], {}, tmp_path, experiment="e", arm="a", repeat=0
            )
        )


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    code = main(
        [
            "sweep",
            "--base-url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--workload",
            "short=45:8",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "no concurrency levels" in capsys.readouterr().err
    code = main(
        [
            "sweep",
            "--base-url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--workload",
            "short=45:8",
            "--concurrency",
            "1",
            "--api-key-env",
            "ATTNBENCH_TEST_UNSET_KEY",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "ATTNBENCH_TEST_UNSET_KEY" in capsys.readouterr().err


def test_cli_unreachable_server_names_the_cause(tmp_path, capsys):
    code = main(
        [
            "sweep",
            "--base-url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--workload",
            "short=45:8",
            "--concurrency",
            "1",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot count prompt tokens" in err and "127.0.0.1:9/tokenize" in err


def test_expected_requests_from_the_warmup():
    def rec(e2e, ok=True):
        return RequestRecord(
            experiment="e",
            arm="a",
            repeat=0,
            workload="w",
            concurrency=2,
            phase="warmup",
            index=0,
            request_id="x",
            start=100.0,
            end=100.0 + e2e,
            ok=ok,
        )

    # two requests of 0.5 s in flight at a time: 4 per second, 40 in 10 s, of which 70% are prebuilt
    assert expected_requests([rec(0.5), rec(0.5), rec(9.0, ok=False)], 2, 10.0) == 28
    assert expected_requests([], 2, 10.0) == 0 and expected_requests([rec(0.5)], 2, 0.0) == 0


def test_level_time_floor_builds_prompts_until_it_is_reached():
    from attnbench.measure.level import Level

    async def scenario():
        level = Level({}, [("p0", 0)], "measure", 1)
        built = []

        async def more(index):
            built.append(index)
            return (f"p{index}", index)

        level.set_floor(0.2, more)
        sent = 0
        t0 = time.monotonic()
        while await level.wants_more():
            level.next += 1
            sent += 1
            await asyncio.sleep(0.05)
        return sent, built, time.monotonic() - t0, level

    sent, built, took, level = asyncio.run(scenario())
    assert took >= 0.2 and sent == len(level.prompts) and built == list(range(1, sent))

    # without a floor the level ends with its prepared prompts
    async def no_floor():
        level = Level({}, [("p0", 0)], "measure", 1)
        level.set_floor(0.0, None)
        first = await level.wants_more()
        level.next += 1
        return first, await level.wants_more()

    assert asyncio.run(no_floor()) == (True, False)


def test_progress_lines_in_a_log_say_requests_seconds_and_rate(monkeypatch, capsys):
    from attnbench.measure import progress as progress_mod
    from attnbench.measure.level import Level

    monkeypatch.setattr(progress_mod, "PROGRESS_EVERY_S", 0.0)  # a line at every tick
    level = Level({}, [("p", 0)] * 4, "measure", 2)
    now = time.time()
    level.records = [
        RequestRecord(
            experiment="e",
            arm="a",
            repeat=0,
            workload="short",
            concurrency=2,
            phase="measure",
            index=i,
            request_id=f"r{i}",
            start=now - 2.0,
            end=now,
            completion_tokens=64,
            ok=True,
        )
        for i in range(2)
    ]
    progress = progress_mod.Progress("short c=2", 4, 10.0)
    progress.tick(level)
    progress.finish("2.0 s, 64.0 output tok/s")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("short c=2: 2/4 done, 0 failed, 2.0/10 s, ") and err[0].endswith(" output tok/s so far")
    assert 60 < float(err[0].split(", ")[3].split()[0]) < 65  # 128 tokens over ~2 s
    assert err[1] == "short c=2: 2/4 done, 0 failed, 2.0 s, 64.0 output tok/s"
