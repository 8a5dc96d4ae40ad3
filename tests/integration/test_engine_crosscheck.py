"""`attnbench crosscheck` against a real vLLM CPU server: vLLM's own benchmark (run inside the engine interpreter)
and our sweep, alternating, on one server. The CPU is too noisy to judge agreement (README: cross-check); what is
checked is that both tools ran the same workload and that every figure the report reads is there."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.engine


def test_crosscheck_runs_both_tools_on_the_same_workload(engine_server, engine_python, tiny_model, tmp_path):
    out = tmp_path / "xc"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnbench.cli",
            "crosscheck",
            "--base-url",
            engine_server.base_url,
            "--model",
            engine_server.model,
            "--tokenizer",
            str(tiny_model[1]),
            "--engine-python",
            engine_python,
            "--input-len",
            "20",
            "--output-len",
            "8",
            "--concurrency",
            "2",
            "--num-prompts",
            "4",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "crosscheck.json").read_text())
    assert [r["tool"] for r in result["vllm"]] == ["vllm", "vllm"] and len(result["ours"]) == 2
    # Ours was given vLLM's served prompt length (chat template included), so both sent the same prompts' size.
    assert {r["prompt_tokens_median"] for r in result["vllm"] + result["ours"]} == {
        result["vllm"][0]["prompt_tokens_median"]
    }
    assert result["vllm"][0]["prompt_tokens_median"] > 20  # the template adds tokens to vLLM's random-input-len
    assert all(r["completion_tokens_mean"] == 8 for r in result["vllm"] + result["ours"])
    cmp = result["comparison"]
    assert cmp["output_throughput_ratio"] > 0 and cmp["noise_vllm_throughput_rel"] >= 0
    assert "output throughput ratio ours/vllm" in proc.stdout
    # Both tools' raw results are kept: vLLM's JSON and our run folders.
    assert (out / "vllm-1.json").is_file() and (out / "ours-2" / "records.jsonl").is_file()
