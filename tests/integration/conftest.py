"""Session fixture for the bundle integration tests: two reduced CPU demos run by the real pipeline (Snakemake,
real vLLM CPU engine), each ending in the bundle its `rule all` writes and verifies. The server is given an API
key through the environment (sweep.api_key_env -> VLLM_API_KEY), so the tests can check it reaches no bundle."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_pipeline import make_workdir, reduced_config, snakemake

API_KEY_ENV = "ATTNBENCH_ITEST_API_KEY"
API_KEY = "sk-itest-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"


@dataclass
class DemoRun:
    workdir: Path
    exp_dir: Path
    config_path: Path
    bundle: Path
    api_key_env: str = API_KEY_ENV
    api_key: str = API_KEY  # what the server and client were given


def _run_demo(tmp: Path, experiment: str, arm: dict) -> DemoRun:
    cfg = reduced_config(
        experiment,
        os.environ["ATTNBENCH_ENGINE_PYTHON"],
        [arm],
        # two workloads, not in name order: tables follow the config's order
        {
            "short": {"prompt_tokens": 45, "output_tokens": 8, "concurrency": [1, 2]},
            "long": {"prompt_tokens": 300, "output_tokens": 8, "concurrency": [1]},
        },
        repeats=2,
        api_key_env=API_KEY_ENV,
    )
    workdir = make_workdir(tmp, cfg)
    snakemake(workdir)
    exp_dir = workdir / "results" / experiment
    digest, name = (exp_dir / "bundle.sha256").read_text().split()
    return DemoRun(workdir, exp_dir, workdir / "config.yaml", exp_dir / name)


@pytest.fixture(scope="session")
def demo_bundles(engine_python, tmp_path_factory) -> tuple[DemoRun, DemoRun]:
    """Two demo experiments (CPU_ATTN with and without split-KV decode), 2 repeats each, bundled by the pipeline."""
    os.environ[API_KEY_ENV] = API_KEY  # the snakemake subprocess (and run-arm under it) inherit it
    try:
        a = _run_demo(tmp_path_factory.mktemp("demo-a"), "itest_split", {"name": "split", "backend": "CPU_ATTN"})
        b = _run_demo(
            tmp_path_factory.mktemp("demo-b"),
            "itest_nosplit",
            {"name": "nosplit", "backend": "CPU_ATTN", "env": {"VLLM_CPU_ATTN_SPLIT_KV": "0"}},
        )
    finally:
        os.environ.pop(API_KEY_ENV, None)
    return a, b
