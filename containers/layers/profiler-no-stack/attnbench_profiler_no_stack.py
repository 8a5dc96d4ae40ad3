"""Make vLLM 0.7.x's torch profiler capture no Python stacks, so that POST /stop_profile does not kill the engine.

Why: vLLM 0.7.1's worker (vllm/worker/worker.py) builds `torch.profiler.profile(..., with_stack=True, ...)` when
VLLM_TORCH_PROFILER_DIR is set. With torch 2.5.1 on the H100 host, stopping that profiler crashed the engine
process: `RuntimeError: !stack.empty() INTERNAL ASSERT FAILED at ".../profiler_python.cpp":981 ... Python replay
stack is empty`; no trace was written while /health kept answering (../shared/gpu/vllm-0.7.1.md). Kernel names, all
the kernel probe needs, come without stacks (later vLLM lines default to with_stack False for the same reason of size).

What it does: once `torch.profiler` is imported, `torch.profiler.profile` is replaced by a subclass whose constructor
forces with_stack=False. A subclass, not a function, so isinstance checks and `with` keep working. One line on
stderr says it is active, so the server log records it. Standard library only until torch itself is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "torch.profiler"
MARKER = "_attnbench_no_stack"


def patch_profiler(module) -> None:
    original = module.profile
    if getattr(original, MARKER, False):
        return

    class profile(original):  # noqa: N801 - keeps torch's name
        def __init__(self, *args, **kwargs):
            kwargs["with_stack"] = False
            super().__init__(*args, **kwargs)

    setattr(profile, MARKER, True)
    profile.__doc__ = original.__doc__
    module.profile = profile
    print("attnbench profiler-no-stack layer: torch.profiler.profile runs with with_stack=False", file=sys.stderr,
          flush=True)


class _PatchAfterLoad(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch_profiler(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfterLoad(spec.loader)
        return spec


def install() -> None:
    """Patch now if torch.profiler is already imported, else when it is."""
    if TARGET in sys.modules:
        patch_profiler(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
