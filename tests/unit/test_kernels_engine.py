"""The profiler probe against the real vLLM CPU engine: profiler_settings() as this vLLM version wants them,
POST /start_profile, two requests, POST /stop_profile, then attribute() on the traces the server wrote."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from attnbench.engines import kernels
from attnbench.engines.server import Server, free_port

pytestmark = pytest.mark.engine


def _tests_conftest():
    """tests/conftest.py by path: `from conftest import ...` resolves to whichever conftest.py pytest imported
    last (tests/integration/ has one too), so the name alone is ambiguous in a full run."""
    spec = importlib.util.spec_from_file_location("attnbench_tests_conftest", Path(__file__).parents[1] / "conftest.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    if not hasattr(module, "engine_launch_spec"):
        spec.loader.exec_module(module)  # dataclasses need the module registered while it executes
    return module


_conftest = _tests_conftest()
STARTUP_TIMEOUT_S, engine_launch_spec = _conftest.STARTUP_TIMEOUT_S, _conftest.engine_launch_spec


def test_profiler_config_keys_are_accepted_by_the_engines_vllm(engine_python, tmp_path):
    version = subprocess.run(
        [engine_python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    args, env = kernels.profiler_settings(version, tmp_path / "trace")
    assert args and not env, f"vLLM {version} takes --profiler-config"
    # The engine's own ProfilerConfig parses the JSON we pass (an unknown key or bad value raises there).
    script = (
        "import json, sys; from vllm.config import ProfilerConfig; print(ProfilerConfig(**json.loads(sys.argv[1])))"
    )
    out = subprocess.run([engine_python, "-c", script, args[1]], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch_profiler_with_stack=False" in out.stdout


def test_probe_on_the_cpu_engine_attributes_cpu_attention(engine_python, tiny_model, tmp_path):
    version = subprocess.run(
        [engine_python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    trace_dir = tmp_path / "trace"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    spec = engine_launch_spec(engine_python, *tiny_model, port)
    args, env = kernels.profiler_settings(version, trace_dir)
    spec.argv += args
    spec.env.update(env)
    with Server(spec, tmp_path / "server.log", base_url, STARTUP_TIMEOUT_S) as server:
        server.wait_ready()
        with httpx.Client(base_url=base_url, timeout=120) as client:
            client.post("/start_profile").raise_for_status()
            for seed in (1, 2):
                prompt = " ".join(f"w{(i * 7 + seed) % 1000}" for i in range(40))
                body = {"model": "tiny-qwen2", "prompt": prompt, "max_tokens": 6, "ignore_eos": True}
                client.post("/v1/completions", json=body).raise_for_status()
            client.post("/stop_profile").raise_for_status()
    att = kernels.attribute(trace_dir)
    assert att["device"] == "cpu"
    assert att["families_seen"] == ["cpu_attention"]
    assert att["phase_source"] == "step_annotation"
    tiny_layers = 2
    assert att["phases"]["prefill"]["families"]["cpu_attention"]["count"] == 2 * tiny_layers
    assert att["phases"]["decode"]["families"]["cpu_attention"]["count"] >= 2 * tiny_layers
    assert (
        kernels.check_expectations(att, {"require": ["cpu_attention"], "forbid": ["fa2", "fa3", "pytorch_flash"]}) == []
    )
