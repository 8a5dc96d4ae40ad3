"""Whether an engine image can run an arm and its model on a GPU type at all: the image's compute capabilities, the
backend's minimum, the variant's engine lines, and the model's weights against the card's memory.

The check runs before any image is built (the build rule calls `attnbench gpu check`), so a pair that cannot work
stops with a message instead of an hour of building and a CUDA error at the first kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnbench.engines.gputype import parse_gpu_type
from attnbench.errors import CompatibilityError

# Memory the engine needs beside the weights before it can hold even a small KV cache: CUDA context, activations
# of the profiling run, CUDA graphs. A rough floor, not a measurement; it only has to catch hopeless pairs.
ENGINE_OVERHEAD_BYTES = 1 << 30
DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4, "auto": 2}


# --- model size -----------------------------------------------------------------------------------------------


def estimate_weight_bytes(arch: dict, dtype: str = "auto", quantization: str | None = None) -> int:
    """Bytes of a decoder-only transformer's weights from its HF config.json (Llama/Qwen2/Mistral layout).

    Linear layers of the blocks are quantized when the config has a quantization_config (or `quantization` is given):
    bits/8 per weight plus one fp16 scale and one packed zero point per group. Embeddings, lm_head and norms stay in
    the model dtype, as AWQ/GPTQ checkpoints keep them.
    """
    h = arch["hidden_size"]
    layers = arch["num_hidden_layers"]
    heads = arch["num_attention_heads"]
    kv_heads = arch.get("num_key_value_heads", heads)
    head_dim = arch.get("head_dim") or h // heads
    inter = arch["intermediate_size"]
    vocab = arch["vocab_size"]
    qkv = h * head_dim * (heads + 2 * kv_heads)
    linear_per_layer = qkv + heads * head_dim * h + 3 * h * inter
    bias_per_layer = head_dim * (heads + 2 * kv_heads) if arch.get("model_type") == "qwen2" else 0
    plain = vocab * h * (1 if arch.get("tie_word_embeddings") else 2) + layers * (2 * h + bias_per_layer) + h

    dtype = arch.get("torch_dtype", "float16") if dtype == "auto" else dtype
    plain_bytes = DTYPE_BYTES.get(str(dtype), 2)
    qcfg = arch.get("quantization_config") or ({"bits": 4, "group_size": 128} if quantization else None)
    linear = layers * linear_per_layer
    if qcfg:
        bits = qcfg.get("bits", 4)
        group = qcfg.get("group_size", 128) or 128
        linear_bytes = linear * bits / 8 + (linear / group) * (2 + bits / 8)
    else:
        linear_bytes = linear * plain_bytes
    return int(plain * plain_bytes + linear_bytes)


def _model_arch(cfg: dict) -> dict | None:
    model = cfg.get("model") or {}
    source = model.get("architecture") or (Path(model["path"]) / "config.json" if model.get("path") else None)
    if source is None or not Path(source).is_file():
        return None
    return json.loads(Path(source).read_text(encoding="utf-8"))


# --- compatibility --------------------------------------------------------------------------------------------


def _cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def _sm(cc: str) -> str:
    return "sm_" + cc.replace(".", "")


def _lines_covering(lock: dict, cc: str) -> list[str]:
    return [key for key, entry in lock["images"].items() if cc in (entry.get("compute_capabilities") or [])]


def compatibility_problems(cfg: dict, arm: dict, gpu_type: str, lock: dict) -> list[str]:
    """Why this (engine image, arm, model, GPU type) cannot work; empty when nothing is known to be wrong.
    Each message names the engine and the GPU and says what to choose instead."""
    engine = cfg["engine"]
    gpu = parse_gpu_type(gpu_type)
    runtime = engine.get("runtime")
    device = engine.get("device", "cuda")
    problems: list[str] = []

    if device == "cuda" and gpu.is_cpu:
        problems.append(
            f"engine.device is cuda but this host has no GPU ({gpu_type}); run config/demo.yaml (CPU engine) here, "
            f"or set gpu.type to the GPU the run is for"
        )
        return problems
    if runtime not in ("docker", "apptainer"):
        return problems  # venv/native: no lock entry to check against

    key = engine.get("image")
    if key not in lock["images"]:
        raise CompatibilityError(
            f"engine.image: {key!r} is not in containers/lock.yaml; known: {', '.join(sorted(lock['images']))}"
        )
    entry = lock["images"][key]
    what = f"engine image {key} (vLLM {entry['version']}, CUDA {entry.get('cuda')})"
    if entry.get("device") != device:
        problems.append(f"{what} is a {entry.get('device')} image but engine.device is {device}")

    if not gpu.is_cpu:
        ccs = entry.get("compute_capabilities") or []
        if gpu.compute_cap not in ccs:
            others = [k for k in _lines_covering(lock, gpu.compute_cap) if k != key]
            instead = f"engine.image: {' or '.join(others)}" if others else "no engine line in containers/lock.yaml"
            span = f"{_sm(ccs[0])}..{_sm(ccs[-1])}" if ccs else "no GPU"
            problems.append(
                f"{what} has no code for {_sm(gpu.compute_cap)} ({gpu_type}): its images cover {span}. "
                f"Choose instead: {instead} covers {_sm(gpu.compute_cap)}, or a GPU with {span}"
            )
        backend = arm.get("backend")
        min_cc = (entry.get("backend_min_cc") or {}).get(backend)
        if min_cc and _cc_tuple(gpu.compute_cap) < _cc_tuple(min_cc):
            problems.append(
                f"arm {arm['name']}: backend {backend} needs {_sm(min_cc)}+ but {gpu_type} is {_sm(gpu.compute_cap)}; "
                f"{what} would silently fall back to another backend. Choose instead: an XFORMERS/TRITON arm, "
                f"or a GPU with {_sm(min_cc)} or newer"
            )

    variant = arm.get("variant")
    if variant and variant not in (entry.get("variants") or []):
        supported = [k for k, e in lock["images"].items() if variant in (e.get("variants") or [])]
        problems.append(
            f"arm {arm['name']}: variant {variant} is not defined for {what}; it exists for: "
            f"{', '.join(supported) or 'no engine line'}"
        )

    arch = _model_arch(cfg)
    if arch is not None and gpu.memory_gib is not None:
        model = cfg["model"]
        weights = estimate_weight_bytes(arch, model.get("dtype", "auto"), model.get("quantization"))
        budget = gpu.memory_gib * (1 << 30) * model.get("gpu_memory_utilization", 0.9)
        if weights + ENGINE_OVERHEAD_BYTES > budget:
            quantized = bool(arch.get("quantization_config") or model.get("quantization"))
            instead = (
                "a smaller model or a GPU with more memory"
                if quantized
                else "the 4-bit AWQ model (config/models/qwen2.5-7b-instruct-awq.json)"
            )
            problems.append(
                f"model {model['name']}: its weights need about {weights / (1 << 30):.1f} GiB, and with the engine's "
                f"~1 GiB overhead that exceeds {model.get('gpu_memory_utilization', 0.9)} x {gpu.memory_gib} GiB of "
                f"{gpu_type}. Choose instead: {instead}"
            )
    return problems


def check_compatible(cfg: dict, gpu_type: str, lock: dict, arms: list[dict] | None = None) -> None:
    """Raise CompatibilityError listing every problem of every arm; silent when all arms can run."""
    problems: list[str] = []
    for arm in arms if arms is not None else cfg["arms"]:
        for problem in compatibility_problems(cfg, arm, gpu_type, lock):
            if problem not in problems:
                problems.append(problem)
    if problems:
        raise CompatibilityError(
            f"{cfg['engine'].get('image') or cfg['engine']['runtime']} on {gpu_type}: " + " | ".join(problems)
        )
