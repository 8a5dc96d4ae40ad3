"""The xformers-cutlass variant's patch, run against xformers 0.0.28.post3's REAL dispatcher source
(tests/fixtures/xformers-0.0.28.post3/dispatch.py, byte-identical to the file in the PyPI wheel).

xformers cannot import here (it needs torch 2.5.1 with CUDA), so the modules dispatch.py imports are stubbed: op
classes that all claim to support the inputs (as flash and cutlass both do on sm_80+ with fp16), a minimal
attn_bias and torch.version. The dispatch logic itself is xformers' own; the patch is loaded as in the image: the
variant folder first on PYTHONPATH, so its sitecustomize.py runs at interpreter start. Each case runs in a fresh
interpreter so the import hook sees a clean sys.modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANT = ROOT / "containers" / "variants" / "xformers-cutlass"
REAL_DISPATCH = ROOT / "tests" / "fixtures" / "xformers-0.0.28.post3" / "dispatch.py"
# sha256 of xformers/ops/fmha/dispatch.py as listed in the wheel's RECORD (urlsafe base64, no padding).
WHEEL_RECORD_SHA256 = "BpkB5kFQkqjEZ_93olV5FMn2SRfH5Cl_UT4rKix9KP4"

STUBS = {
    "torch/__init__.py": "class version:\n    cuda = '12.4'\n    hip = None\n",
    "xformers/__init__.py": "",
    "xformers/ops/__init__.py": "",
    "xformers/ops/fmha/__init__.py": "",
    "xformers/ops/fmha/common.py": textwrap.dedent("""
        class AttentionFwOpBase: pass
        class AttentionBwOpBase: pass
        class Inputs: pass
    """),
    "xformers/ops/fmha/attn_bias.py": textwrap.dedent("""
        class AttentionBias: pass
        class BlockDiagonalMask(AttentionBias): pass
        class BlockDiagonalCausalMask(BlockDiagonalMask):
            @classmethod
            def from_seqlens(cls, q_seqlen):  # how vLLM 0.7.1 builds its prefill bias
                return cls()
        VARLEN_BIASES = (BlockDiagonalMask,)
    """),
}
# Op classes with the real NAME strings (xformers 0.0.28.post3 with PyTorch's FA2: flash NAME is fa2F@v<ver>-pt).
OP_NAMES = {
    "flash": "fa2F@v2.5.7-pt",
    "flash3": "fa3F@0.0.0",
    "cutlass": "cutlassF-pt",
    "ck": "ckF",
    "triton_splitk": "triton_splitKF",
}
OP_TEMPLATE = textwrap.dedent("""
    import os
    UNSUPPORTED = os.environ.get("STUB_UNSUPPORTED", "").split(",")
    class FwOp:
        NAME = {name!r}
        @classmethod
        def not_supported_reasons(cls, inp):
            return ["stub: unsupported"] if {module!r} in UNSUPPORTED else []
    class BwOp(FwOp):
        VARLEN_LSE_PACKED = True
""")

CASE = textwrap.dedent("""
    import json, sys
    STUB_ROOT, VARIANT, MODE, SHAPE = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    sys.path.insert(0, STUB_ROOT)
    if MODE == "after-import":  # xformers imported before the patch module (no sitecustomize in this run)
        import xformers.ops.fmha.dispatch
        sys.path.insert(0, VARIANT)
        import attnbench_xformers_cutlass
        attnbench_xformers_cutlass.install()
    if MODE == "twice":
        import attnbench_xformers_cutlass
        attnbench_xformers_cutlass.install()
    if MODE == "check":
        import attnbench_xformers_cutlass
        print(json.dumps(attnbench_xformers_cutlass.check()))
        raise SystemExit(0)
    from xformers.ops.fmha import attn_bias, dispatch
    from xformers.ops.fmha import _dispatch_fw_alias  # noqa: the way xformers.ops.fmha imports it

    class T:  # the tensor attributes dispatch.py reads
        def __init__(self, shape, strides):
            self.shape, self._strides, self.ndim, self.dtype = shape, strides, len(shape), "float16"
        def stride(self, dim):
            return self._strides[dim]

    class Inp:
        p = 0.0

    inp = Inp()
    if SHAPE == "prefill":  # vLLM 0.7.1 prefill: BMHK, q and k of the same length, block-diagonal causal bias
        inp.query = T((1, 45, 28, 128), (0, 3584, 128, 1))
        inp.key = inp.value = T((1, 45, 28, 128), (0, 3584, 128, 1))
        inp.attn_bias = attn_bias.BlockDiagonalCausalMask()
    else:  # GQA decode shape where xformers moves flash to the front (split-K branch)
        inp.query = T((1, 1, 4, 7, 128), (0, 0, 896, 128, 1))
        inp.key = inp.value = T((1, 512, 4, 7, 128), (0, 512, 128, 0, 1))
        inp.attn_bias = None
    try:
        chosen = _dispatch_fw_alias(inp, False).NAME
    except NotImplementedError as exc:
        chosen = "NotImplementedError: " + str(exc).splitlines()[0]
    listed = [op.NAME for op in dispatch._dispatch_fw_priority_list(inp, False)]
    print(json.dumps({"chosen": chosen, "listed": listed}))
""")


def test_fixture_is_the_wheels_dispatch_py():
    import base64

    digest = base64.urlsafe_b64encode(hashlib.sha256(REAL_DISPATCH.read_bytes()).digest()).rstrip(b"=").decode()
    assert digest == WHEEL_RECORD_SHA256


@pytest.fixture
def stub_root(tmp_path) -> Path:
    root = tmp_path / "stubs"
    for rel, text in STUBS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    fmha = root / "xformers" / "ops" / "fmha"
    for module, name in OP_NAMES.items():
        (fmha / f"{module}.py").write_text(OP_TEMPLATE.format(name=name, module=module))
    shutil.copy(REAL_DISPATCH, fmha / "dispatch.py")
    # xformers/ops/fmha/__init__.py does `from .dispatch import _dispatch_fw`; the stub does the same, under a
    # name the case script can import, to prove the patch reaches callers holding their own reference.
    (fmha / "__init__.py").write_text("from .dispatch import _dispatch_fw as _dispatch_fw_alias\n")
    return root


def run_case(stub_root: Path, mode: str, shape: str = "prefill", unsupported: str = "", pythonpath=None) -> tuple:
    env = {"PATH": "/usr/bin:/bin", "STUB_UNSUPPORTED": unsupported}
    if mode not in ("unpatched", "after-import"):
        # As in the image: the variant folder first on PYTHONPATH (containers.py), so sitecustomize.py runs.
        env["PYTHONPATH"] = os.pathsep.join([str(VARIANT), *(pythonpath or [])])
    proc = subprocess.run(
        [sys.executable, "-c", CASE, str(stub_root), str(VARIANT), mode, shape],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_unpatched_real_dispatcher_picks_flash(stub_root):
    # The control: without the patch, xformers' own priority list picks its flash op (the article's erratum).
    result, _ = run_case(stub_root, "unpatched")
    assert result["chosen"] == "fa2F@v2.5.7-pt"
    assert result["listed"] == ["fa2F@v2.5.7-pt", "cutlassF-pt"]


def test_patched_dispatcher_never_picks_flash_for_vllm_prefill(stub_root):
    result, stderr = run_case(stub_root, "sitecustomize")
    assert result["chosen"] == "cutlassF-pt"
    assert result["listed"] == ["cutlassF-pt"]
    assert "attnbench xformers-cutlass patch" in stderr


def test_patched_dispatcher_drops_flash_from_the_split_k_branch(stub_root):
    unpatched, _ = run_case(stub_root, "unpatched", shape="gqa-decode")
    assert unpatched["listed"][0] == "fa2F@v2.5.7-pt"  # xformers moves flash to the front here
    result, _ = run_case(stub_root, "sitecustomize", shape="gqa-decode")
    assert not any(name.startswith(("fa2", "fa3")) for name in result["listed"])
    assert result["chosen"] == "triton_splitKF"


def test_no_silent_flash_when_cutlass_cannot_run(stub_root):
    result, _ = run_case(stub_root, "sitecustomize", unsupported="cutlass")
    assert result["chosen"].startswith(
        "NotImplementedError: No operator found for `memory_efficient_attention_forward`"
    )


def test_patch_applies_when_xformers_was_imported_first(stub_root):
    result, stderr = run_case(stub_root, "after-import")
    assert result["chosen"] == "cutlassF-pt"


def test_patch_is_applied_once(stub_root):
    result, stderr = run_case(stub_root, "twice")
    assert result["chosen"] == "cutlassF-pt"
    assert stderr.count("attnbench xformers-cutlass patch") == 1


def test_build_time_check_lists_cutlass_and_no_flash(stub_root):
    lists, _ = run_case(stub_root, "check")
    assert lists == {"prefill": ["cutlassF-pt"], "split_k": ["triton_splitKF", "cutlassF-pt"]}


def test_a_shadowed_sitecustomize_still_runs(stub_root, tmp_path):
    # Debian/Ubuntu Pythons ship their own sitecustomize; ours comes first on PYTHONPATH and must chain to it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import sys; print('shadowed sitecustomize ran', file=sys.stderr)\n")
    result, stderr = run_case(stub_root, "sitecustomize", pythonpath=[str(other)])
    assert result["chosen"] == "cutlassF-pt"
    assert "shadowed sitecustomize ran" in stderr
