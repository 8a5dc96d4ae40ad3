"""Make xformers' attention dispatcher never pick a FlashAttention op, so vLLM's XFORMERS backend prefills through
xformers' CUTLASS kernels: the true no-FlashAttention-2 baseline the article's erratum asks for.

Why a patch: vLLM 0.7.1's XFormers backend calls `xops.memory_efficient_attention_forward(q, k, v, attn_bias=...,
p=0.0, scale=...)` with no `op=`, and xformers 0.0.28.post3's dispatcher (`ops/fmha/dispatch.py`) tries
`[flash3.FwOp if enabled, flash.FwOp, cutlass.FwOp]` in order, so on sm_80+ with fp16/bf16 the flash op (PyTorch's
bundled FlashAttention-2) wins. No environment variable turns it off.

What it does: wraps `xformers.ops.fmha.dispatch._dispatch_fw_priority_list` and drops the flash ops (flash, flash3)
from the list it returns. `_dispatch_fw` looks that function up in its module's globals at each call, so the wrapper
takes effect for every caller, including `xformers.ops.fmha`'s own `from .dispatch import _dispatch_fw`. If no op
is left that supports the inputs, xformers raises "No operator found" instead of silently using FlashAttention.

How it is loaded: the variant folder is first on PYTHONPATH in the image (containers.py), so its sitecustomize.py
runs `install()` at every interpreter start, vLLM's worker processes included. `install()` only registers an import
hook; xformers (and torch) are not imported until
vLLM imports them, and the patch is applied right after `xformers.ops.fmha.dispatch` executes. One line on stderr
says it is active, so the server log records it.

Build-time check: `python3 -m attnbench_xformers_cutlass` (install.sh) imports the image's real xformers, applies
the patch and fails unless the forward priority list holds cutlass and no flash op, for the input shapes vLLM 0.7.1
passes. Standard library only; this file is copied into the xformers-cutlass container variant.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

DISPATCH_MODULE = "xformers.ops.fmha.dispatch"
# Module names (xformers.ops.fmha.<name>) whose forward ops are FlashAttention.
FLASH_OP_MODULES = ("flash", "flash3")
MARKER = "_attnbench_no_flash"


def is_flash_op(op) -> bool:
    module = getattr(op, "__module__", "") or ""
    return module.rsplit(".", 1)[-1] in FLASH_OP_MODULES or is_flash_op_name(str(getattr(op, "NAME", "")))


def patch_dispatch(dispatch) -> None:
    """Wrap dispatch._dispatch_fw_priority_list so its result holds no flash op. Idempotent."""
    original = dispatch._dispatch_fw_priority_list
    if getattr(original, MARKER, False):
        return

    def _dispatch_fw_priority_list(inp, needs_gradient):
        ops = original(inp, needs_gradient)
        # The original returns a deque; keep its container type for callers that use deque methods.
        return type(ops)(op for op in ops if not is_flash_op(op))

    setattr(_dispatch_fw_priority_list, MARKER, True)
    _dispatch_fw_priority_list.__wrapped__ = original
    dispatch._dispatch_fw_priority_list = _dispatch_fw_priority_list
    print(
        "attnbench xformers-cutlass patch: flash ops removed from xformers' forward dispatch "
        f"({DISPATCH_MODULE}); prefill uses cutlass",
        file=sys.stderr,
        flush=True,
    )


class _PatchAfterLoad(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch_dispatch(module)

    def __getattr__(self, name):
        # get_source, get_filename, ...: whatever else asks the loader (inspect, linecache) gets the real one.
        return getattr(self._loader, name)


class _DispatchFinder(importlib.abc.MetaPathFinder):
    """Finds xformers' dispatch module through the normal path finder and patches it once it has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != DISPATCH_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchAfterLoad(spec.loader)
        return spec


def install() -> None:
    """Patch now if xformers' dispatcher is already imported, else when it is."""
    if DISPATCH_MODULE in sys.modules:
        patch_dispatch(sys.modules[DISPATCH_MODULE])
        return
    if not any(isinstance(finder, _DispatchFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DispatchFinder())


class _Tensor:
    """What the dispatcher reads of a tensor (shape, ndim, stride, dtype): enough to ask for a priority list
    without torch tensors, so the check also runs without a GPU."""

    def __init__(self, shape: tuple, strides: tuple):
        self.shape, self._strides, self.ndim, self.dtype = shape, strides, len(shape), "float16"

    def stride(self, dim: int) -> int:
        return self._strides[dim]


def check() -> dict[str, list[str]]:
    """The patched forward priority list (op NAMEs) for vLLM 0.7.1's prefill call and for xformers' split-K
    branch; raises SystemExit naming the problem if a flash op is listed or cutlass is missing for prefill."""
    install()
    from xformers.ops.fmha import attn_bias, dispatch

    class _Inputs:
        p = 0.0

    prefill = _Inputs()  # BMHK, 45 tokens, 28 heads of 128, block-diagonal causal bias (vLLM 0.7.1 prefill)
    prefill.query = prefill.key = prefill.value = _Tensor((1, 45, 28, 128), (0, 3584, 128, 1))
    prefill.attn_bias = attn_bias.BlockDiagonalCausalMask.from_seqlens([45])  # as vLLM 0.7.1 builds it
    split_k = _Inputs()  # BMGHK GQA, 1 query vs 512 keys: the branch where xformers moves flash to the front
    split_k.query = _Tensor((1, 1, 4, 7, 128), (0, 0, 896, 128, 1))
    split_k.key = split_k.value = _Tensor((1, 512, 4, 7, 128), (0, 512, 128, 0, 1))
    split_k.attn_bias = None
    lists = {name: [op.NAME for op in dispatch._dispatch_fw_priority_list(inp, False)]
             for name, inp in (("prefill", prefill), ("split_k", split_k))}  # fmt: skip
    flash = {name: ops for name, ops in lists.items() if any(is_flash_op_name(op) for op in ops)}
    if flash:
        raise SystemExit(f"xformers-cutlass patch failed: flash ops still listed {flash}")
    if not any(op.startswith("cutlass") for op in lists["prefill"]):
        raise SystemExit(f"xformers-cutlass patch: no cutlass op for prefill (listed {lists['prefill']})")
    return lists


def is_flash_op_name(name: str) -> bool:
    return name.startswith(("fa2", "fa3"))


if __name__ == "__main__":
    import xformers

    print(f"xformers {xformers.__version__}: forward priority lists after the patch: {check()}")
