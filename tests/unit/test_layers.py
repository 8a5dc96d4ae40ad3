"""The profiler-no-stack layer (containers/layers/profiler-no-stack) against the real torch profiler of the CPU
engine's venv, alone and chained with the xformers-cutlass variant's sitecustomize (both on PYTHONPATH, as the
errata's cutlass arm runs them): each patch is installed once, the profiler records without stacks and still
writes a trace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from attnbench.engines.kernels import PROFILER_LAYER

ROOT = Path(__file__).resolve().parents[2]
VARIANT = ROOT / "containers" / "variants" / "xformers-cutlass"

PROBE = r"""
import json, sys, torch, torch.profiler as tp
out = sys.argv[1]
with tp.profile(activities=[tp.ProfilerActivity.CPU], with_stack=True,
                on_trace_ready=tp.tensorboard_trace_handler(out)) as prof:
    torch.ones(64, 64) @ torch.ones(64, 64)
print(json.dumps({"with_stack": prof.with_stack, "subclass": isinstance(prof, tp.profile)}))
"""


def _run(engine_python: str, pythonpath: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run(
        [engine_python, "-c", PROBE, str(tmp_path / "trace")], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.engine
def test_layer_turns_with_stack_off_in_the_real_profiler(engine_python, tmp_path):
    proc = _run(engine_python, [PROFILER_LAYER], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"with_stack": false' in proc.stdout and '"subclass": true' in proc.stdout
    assert proc.stderr.count("attnbench profiler-no-stack layer") == 1
    assert list((tmp_path / "trace").glob("*.json")), "the profiler still writes its trace"


@pytest.mark.engine
def test_without_the_layer_the_profiler_keeps_stacks(engine_python, tmp_path):
    proc = _run(engine_python, [], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"with_stack": true' in proc.stdout


@pytest.mark.engine
def test_variant_and_layer_chain_each_once(engine_python, tmp_path):
    """The variant's sitecustomize comes first and must run the layer's after it, once, never looping back."""
    proc = _run(engine_python, [VARIANT, PROFILER_LAYER], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"with_stack": false' in proc.stdout
    assert proc.stderr.count("attnbench profiler-no-stack layer") == 1
