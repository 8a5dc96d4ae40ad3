"""Which GPU this host has (NVML, else nvidia-smi) and the GPU type key a run is filed under; `attnbench gpu`.

The key's rules are gputype.py; whether an engine image can run an arm on a key is compat.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from attnbench.config import arm_by_name, load_config
from attnbench.engines.compat import check_compatible
from attnbench.engines.gputype import cpu_key, gpu_type_key, parse_gpu_type
from attnbench.engines.lock import load_lock
from attnbench.errors import AttnbenchError

NVIDIA_SMI_QUERY = ["--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"]


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


# --- detection --------------------------------------------------------------------------------------------------


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
    text = "detect the GPU type; check an engine/GPU pair before building"
    p = subparsers.add_parser("gpu", help=text, description=text)
    sub = p.add_subparsers(dest="gpu_command", required=True, metavar="ACTION")
    text = "print this host's GPU type key (NVML, else nvidia-smi; cpu-<arch> without GPU)"
    d = sub.add_parser("detect", help=text, description=text)
    d.add_argument("--json", action="store_true", help="print every GPU as JSON")
    d.set_defaults(func=_cmd_detect)
    text = "fail unless the config's engine image can run its arms and model on the GPU"
    c = sub.add_parser("check", help=text, description=text)
    c.add_argument("--config", required=True, help="experiment config YAML")
    c.add_argument("--gpu-type", default=None, help="GPU type key to check (default: gpu.type, auto = detect)")
    c.add_argument("--arm", default=None, help="check one arm only")
    c.add_argument("--lock", default=None, help="lock file (default: containers/lock.yaml)")
    c.add_argument("--stamp", default=None, help="write the checked GPU type here on success (for Snakemake)")
    c.set_defaults(func=_cmd_check)
