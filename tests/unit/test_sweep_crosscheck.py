"""crosscheck's arithmetic and the command line it gives vLLM's benchmark (the runs themselves need a server)."""

import argparse

import pytest

from attnbench.measure.crosscheck import CrosscheckRun, compare, vllm_bench_argv


def run(tps, ttft, tpot):
    return {"output_throughput_tps": tps, "ttft_ms_median": ttft, "tpot_ms_median": tpot}


def test_compare_ratio_differences_and_noise():
    vllm = [run(100.0, 20.0, 5.0), run(110.0, 22.0, 5.5)]
    ours = [run(102.0, 21.0, 5.2), run(108.0, 23.0, 5.4)]
    c = compare(vllm, ours)
    assert c["output_throughput_ratio"] == pytest.approx(105 / 105)
    assert c["ttft_ms_median_diff"] == pytest.approx(1.0)
    assert c["tpot_ms_median_diff"] == pytest.approx(0.05)
    assert c["noise_vllm_throughput_rel"] == pytest.approx(10 / 105)
    assert c["noise_ours_ttft_ms"] == pytest.approx(2.0)
    assert c["throughput_within_noise"] and c["ttft_within_noise"] and c["tpot_within_noise"]
    far = compare(vllm, [run(150.0, 40.0, 9.0), run(151.0, 41.0, 9.1)])
    assert not far["throughput_within_noise"] and not far["ttft_within_noise"] and not far["tpot_within_noise"]


def test_vllm_argv_matches_the_workload(tmp_path):
    point = CrosscheckRun(
        engine_python="/py",
        api="chat",
        base_url="http://127.0.0.1:1",
        model="m",
        tokenizer="/t",
        input_len=45,
        output_len=64,
        concurrency=4,
        num_prompts=32,
        warmup=2,
        temperature=1.0,
        repeats=2,
        api_key_env=None,
        seed=1000,
        timeout=60.0,
        output=tmp_path,
    )
    argv = vllm_bench_argv(point, 7, tmp_path, "r.json")
    pairs = dict(zip(argv[3::1], argv[4::1]))
    assert argv[:2] == ["/py", "-c"]
    for flag, value in {
        "--backend": "openai-chat",
        "--endpoint": "/v1/chat/completions",
        "--random-input-len": "45",
        "--random-output-len": "64",
        "--random-range-ratio": "0",
        "--max-concurrency": "4",
        "--num-prompts": "32",
        "--num-warmups": "2",
        "--seed": "7",
        "--temperature": "1.0",
    }.items():
        assert pairs[flag] == value, flag
    assert "--ignore-eos" in argv and "--save-detailed" in argv


def test_compare_keeps_each_tools_mean_over_repetitions():
    means = compare([run(160.0, 20.0, 6.2), run(162.0, 22.0, 6.0)], [run(161.0, 19.0, 6.1)])["means"]
    assert means["vllm"] == pytest.approx(
        {"output_throughput_tps": 161.0, "ttft_ms_median": 21.0, "tpot_ms_median": 6.1}
    )
    assert means["ours"]["output_throughput_tps"] == 161.0


def test_measure_commands_describe_themselves_and_crosscheck_takes_sweeps_option_name(tmp_path):
    from attnbench.cli import build_parser
    from attnbench.measure.crosscheck import CrosscheckRun

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("sweep", "open-loop", "crosscheck"):
        description = commands[name].description or ""
        assert len(description) > 40 and description.endswith("."), name
    argv = ["--base-url", "http://127.0.0.1:9", "--model", "m", "--tokenizer", "t", "--engine-python", "/py"]
    args = commands["crosscheck"].parse_args([*argv, "--requests", "7", "--output", str(tmp_path / "x")])
    point = CrosscheckRun.from_namespace(args)
    assert point.num_prompts == 7 and point.output == tmp_path / "x" and point.repeats == 2
