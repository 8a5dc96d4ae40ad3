"""Print, as JSON, the engine versions as seen INSIDE an engine image: vllm, torch, its CUDA, xformers, the GPU.

Runs under the image's own python3 (Snakemake rule engine_versions, through the container: directive, or
`apptainer exec IMAGE python3 containers/probe_versions.py`). Standard library only: attnbench is not installed in
engine images. A package that does not import is recorded as null with the reason, not as a failure: the record
should say what is there.
"""

import importlib
import json
import os
import platform
import sys


def version_of(name):
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # any import failure is a fact to record
        return None, f"{type(exc).__name__}: {exc}"[:300]
    return getattr(module, "__version__", "unknown"), None


def main():
    if not os.environ.get("ATTNBENCH_ENGINE"):
        # Every attnbench image sets it (%environment / ENV). Without it this is the host's python, whose versions
        # must not be recorded as the engine's (e.g. Snakemake run without --use-singularity).
        sys.exit(
            "probe_versions.py: not inside an attnbench engine image (ATTNBENCH_ENGINE is unset); run Snakemake "
            "with --use-singularity, or: apptainer exec IMAGE.sif python3 containers/probe_versions.py"
        )
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    out = {"python": platform.python_version(), "executable": sys.executable, "errors": {}}
    for name in ("vllm", "torch", "xformers"):
        out[name], error = version_of(name)
        if error:
            out["errors"][name] = error
    out["cuda"] = None
    out["gpus"] = []
    if out["torch"]:
        import torch

        out["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["arch_list"] = torch.cuda.get_arch_list()
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                out["gpus"].append(
                    {
                        "name": props.name,
                        "compute_cap": f"{props.major}.{props.minor}",
                        "memory_mib": props.total_memory // (1 << 20),
                    }
                )
    out["image_labels_env"] = {k: v for k, v in os.environ.items() if k.startswith("ATTNBENCH_")}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
