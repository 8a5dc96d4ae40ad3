"""Sweep command-line parsing and guards (the sweep itself runs against the real engine in tests/integration)."""

import asyncio

import pytest

from attnbench.cli import main
from attnbench.errors import SweepError
from attnbench.records import RequestRecord, append_jsonl
from attnbench.sweep import Workload, parse_concurrency, parse_workload, requests_for, run_sweep


def test_parse_workload_spec_and_names():
    assert parse_workload("short=45:512", {}) == Workload("short", 45, 512, [])
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
        asyncio.run(run_sweep("http://127.0.0.1:9", "m", [Workload("w", 45, 8, [1])], {}, tmp_path,
                              experiment="e", arm="a", repeat=0))  # fmt: skip


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    code = main(["sweep", "--base-url", "http://127.0.0.1:9", "--model", "m", "--workload", "short=45:8",
                 "--output", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "no concurrency levels" in capsys.readouterr().err
    code = main(["sweep", "--base-url", "http://127.0.0.1:9", "--model", "m", "--workload", "short=45:8",
                 "--concurrency", "1", "--api-key-env", "ATTNBENCH_TEST_UNSET_KEY", "--output", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "ATTNBENCH_TEST_UNSET_KEY" in capsys.readouterr().err


def test_cli_unreachable_server_names_the_cause(tmp_path, capsys):
    code = main(["sweep", "--base-url", "http://127.0.0.1:9", "--model", "m", "--workload", "short=45:8",
                 "--concurrency", "1", "--output", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot count prompt tokens" in err and "127.0.0.1:9/tokenize" in err
