"""Which GPU this host has, the GPU type key results are filed under, and whether an engine image can run an arm on
it at all.

The GPU type key is `<model slug>-sm<XY>-<memory GiB>g`, e.g. `rtx3070-laptop-sm86-8g` or
`h100-80gb-hbm3-sm90-80g`; a host without a GPU is `cpu-<machine>` (e.g. `cpu-x86_64`). Slug rules, applied to the
name the driver reports:
  1. lower-case; drop the vendor/family words `nvidia`, `geforce`, `tesla`, `quadro`, `gpu`;
  2. split on anything that is not a letter or digit;
  3. glue a product prefix (`rtx`, `gtx`, `gt`) to the number that follows it (`rtx 3070` -> `rtx3070`);
  4. join the words with `-`.
The compute capability becomes `sm` + its digits (8.6 -> sm86, 12.0 -> sm120) and the memory is total MiB / 1024
rounded to whole GiB (81559 MiB -> 80g). The key is what a peer with the same card gets, so bundles from equal cards
land under the same name.

The compatibility check runs before any image is built (the build rule calls `attnbench gpu check`), so a pair that
cannot work stops with a message instead of an hour of building and a CUDA error at the first kernel.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from attnbench.errors import AttnbenchError, CompatibilityError

NVIDIA_SMI_QUERY = ["--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"]
DROP_WORDS = {"nvidia", "geforce", "tesla", "quadro", "gpu"}
GLUE_PREFIXES = {"rtx", "gtx", "gt"}
KEY_RE = re.compile(r"^(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)-sm(?P<major>\d+)(?P<minor>\d)-(?P<gib>\d+)g$")
CPU_KEY_RE = re.compile(r"^cpu-(?P<machine>[a-z0-9_]+)$")
# Memory the engine needs beside the weights before it can hold even a small KV cache: CUDA context, activations
# of the profiling run, CUDA graphs. A rough floor, not a measurement; it only has to catch hopeless pairs.
ENGINE_OVERHEAD_BYTES = 1 << 30
DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4, "auto": 2}


@dataclass
class GpuInfo:
    index: int
    name: str
    compute_cap: str  # "8.6"
    memory_mib: int
    driver: str | None = None

    @property
    def key(self) -> str:
        return gpu_type_key(self.name, self.compute_cap, self.memory_mib)


@dataclass
class GpuType:
    """A GPU type key taken apart; sm and memory are None for a CPU key."""

    key: str
    slug: str
    compute_cap: str | None  # "8.6"
    memory_gib: int | None

    @property
    def is_cpu(self) -> bool:
        return self.compute_cap is None


# --- detection ------------------------------------------------------------------------------------------------


def slugify(name: str) -> str:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in DROP_WORDS]
    glued: list[str] = []
    for word in words:
        if glued and glued[-1] in GLUE_PREFIXES and word[0].isdigit():
            glued[-1] += word
        else:
            glued.append(word)
    return "-".join(glued)


def gpu_type_key(name: str, compute_cap: str, memory_mib: int) -> str:
    major, _, minor = str(compute_cap).strip().partition(".")
    if not (major.isdigit() and (minor or "0").isdigit()):
        raise AttnbenchError(f"GPU {name!r}: compute capability {compute_cap!r} is not of the form 8.6")
    gib = round(memory_mib / 1024)
    return f"{slugify(name)}-sm{int(major)}{int(minor or 0)}-{gib}g"


def cpu_key(machine: str | None = None) -> str:
    return "cpu-" + re.sub(r"[^a-z0-9_]+", "_", (machine or platform.machine() or "unknown").lower())


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Rows of `nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader`."""
    gpus = []
    for index, line in enumerate(x for x in text.splitlines() if x.strip()):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3:
            raise AttnbenchError(f"nvidia-smi line {line!r}: expected name, compute_cap, memory.total")
        memory = re.match(r"(\d+)\s*MiB", fields[2])
        if not memory:
            raise AttnbenchError(f"nvidia-smi line {line!r}: memory {fields[2]!r} is not in MiB")
        driver = fields[3] if len(fields) > 3 else None
        gpus.append(GpuInfo(index, fields[0], fields[1], int(memory.group(1)), driver))
    return gpus


def _detect_nvml() -> list[GpuInfo] | None:
    """None when NVML is unusable here (no nvidia-ml-py, no driver), so the caller tries nvidia-smi."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1 << 20)
            gpus.append(
                GpuInfo(
                    i,
                    name.decode() if isinstance(name, bytes) else name,
                    f"{major}.{minor}",
                    int(memory),
                    driver.decode() if isinstance(driver, bytes) else driver,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _detect_nvidia_smi() -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    proc = subprocess.run([exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # installed but no driver / no device: a CPU host for our purposes
        return []
    return parse_nvidia_smi(proc.stdout)


def detect_gpus() -> list[GpuInfo]:
    gpus = _detect_nvml()
    return gpus if gpus is not None else _detect_nvidia_smi()


def host_gpu_type(gpus: list[GpuInfo] | None = None) -> str:
    """The key of GPU 0 (runs use one GPU, tensor parallel 1), or the CPU key when there is none."""
    gpus = detect_gpus() if gpus is None else gpus
    return gpus[0].key if gpus else cpu_key()


def resolve_gpu_type(cfg: dict, override: str | None = None) -> str:
    """`override` (a --gpu-type argument) or `gpu.type` from the config; `auto` means the detected key."""
    configured = override or (cfg.get("gpu") or {}).get("type", "auto")
    if configured == "auto":
        return host_gpu_type()
    parse_gpu_type(configured)  # a typo fails here, naming the field
    return configured


def planned_gpu_type(cfg: dict) -> str:
    """The GPU type a workflow plans its images for: gpu.type when fixed, else the detected one. A host without a GPU
    planning a cuda run (a login node, a laptop) gets `auto`: its images cannot be built there, and the build's GPU
    check says so; a cluster run should fix gpu.type to the compute nodes' card."""
    key = resolve_gpu_type(cfg)
    if parse_gpu_type(key).is_cpu and (cfg.get("engine") or {}).get("device") == "cuda":
        return "auto"
    return key


def parse_gpu_type(key: str) -> GpuType:
    match = KEY_RE.match(key)
    if match:
        cc = f"{int(match['major'])}.{match['minor']}"
        return GpuType(key, match["slug"], cc, int(match["gib"]))
    if CPU_KEY_RE.match(key):
        return GpuType(key, key, None, None)
    raise CompatibilityError(
        f"gpu.type: {key!r} is not a GPU type key; expected <model>-sm<XY>-<GiB>g such as rtx3070-laptop-sm86-8g, "
        f"a CPU key such as cpu-x86_64, or auto"
    )


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


# --- CLI ------------------------------------------------------------------------------------------------------


def _cmd_detect(args: argparse.Namespace) -> int:
    gpus = detect_gpus()
    key = host_gpu_type(gpus)
    if args.json:
        print(json.dumps({"gpu_type": key, "gpus": [asdict(g) | {"key": g.key} for g in gpus]}, indent=2))
    else:
        print(key)
        for g in gpus:
            print(
                f"  GPU {g.index}: {g.name}, sm_{g.compute_cap.replace('.', '')}, {g.memory_mib} MiB, driver {g.driver}"
            )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from attnbench.config import arm_by_name, load_config
    from attnbench.engines.lock import load_lock

    cfg = load_config(args.config)
    gpu_type = resolve_gpu_type(cfg, args.gpu_type)
    arms = [arm_by_name(cfg, args.arm)] if args.arm else None
    check_compatible(cfg, gpu_type, load_lock(args.lock), arms)
    print(
        f"ok: {cfg['engine'].get('image') or cfg['engine']['runtime']} can run "
        f"{', '.join(a['name'] for a in (arms or cfg['arms']))} on {gpu_type}"
    )
    if args.stamp:
        Path(args.stamp).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stamp).write_text(gpu_type + "\n", encoding="utf-8")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("gpu", help="detect the GPU type; check an engine/GPU pair before building")
    sub = p.add_subparsers(dest="gpu_command", required=True, metavar="ACTION")
    d = sub.add_parser("detect", help="print this host's GPU type key (NVML, else nvidia-smi; cpu-<arch> without GPU)")
    d.add_argument("--json", action="store_true", help="print every GPU as JSON")
    d.set_defaults(func=_cmd_detect)
    c = sub.add_parser("check", help="fail unless the config's engine image can run its arms and model on the GPU")
    c.add_argument("--config", required=True, help="experiment config YAML")
    c.add_argument("--gpu-type", default=None, help="GPU type key to check (default: gpu.type, auto = detect)")
    c.add_argument("--arm", default=None, help="check one arm only")
    c.add_argument("--lock", default=None, help="lock file (default: containers/lock.yaml)")
    c.add_argument("--stamp", default=None, help="write the checked GPU type here on success (for Snakemake)")
    c.set_defaults(func=_cmd_check)
