"""What one engine image is and how its definition is rendered; where the image records of a run live.

One docker image per (engine line, arm, GPU type). The engine line is a key of containers/lock.yaml (base image, digest,
CUDA, compute capabilities); the arm bakes what selects its attention backend (environment for vLLM < 0.11, flags
for later lines, both from `backend.backend_selection`) and, for a variant arm, the variant's files from
containers/variants/<variant>/; the GPU type only goes into the labels and the file name, so that results and images
of different cards never mix.

Definitions are rendered from containers/<engine line>/Dockerfile.in (string.Template, `$name` placeholders). A variant
folder is copied to /opt/attnbench/variant, put first on PYTHONPATH (a sitecustomize.py there runs at interpreter
start) and its install.sh, if any, runs at build time. Building is dockerbuild.py; Apptainer images (a base image per
engine line plus a layer per arm) are apptainer.py.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.engines import apptainer_exec
from attnbench.engines.backend import backend_selection
from attnbench.engines.gpu import resolve_gpu_type
from attnbench.engines.lock import CONTAINERS_DIR, load_lock, lock_entry
from attnbench.errors import ContainerError

VARIANT_TARGET = "/opt/attnbench/variant"
LABEL_PREFIX = "org.attnbench"


# --- what one image is -------------------------------------------------------------------------------------------


@dataclass
class ImageSpec:
    """Everything that decides one image's content and name."""

    key: str  # engine line, a key of lock.yaml
    experiment: str
    arm: str
    gpu_type: str
    base: str  # image:tag
    digest: str | None  # registry digest of base, when pinned or resolved
    backend: str | None
    backend_args: list[str]
    backend_env: dict[str, str]
    variant: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def base_ref(self) -> str:
        """What the definition builds FROM: by digest when known, else the tag."""
        return f"{self.base.rsplit(':', 1)[0]}@{self.digest}" if self.digest else self.base

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def tag(self) -> str:
        """Docker tag: one repository per engine line and arm, the GPU type as the tag."""
        return f"localhost/attnbench-{self.experiment}-{self.key}-{self.arm}:{self.gpu_type}".lower()


def image_spec(cfg: dict, arm: dict, gpu_type: str, lock: dict, *, digest: str | None = None) -> ImageSpec:
    """The image an arm runs in. `digest` overrides the lock's (a digest resolved at build time)."""
    key = cfg["engine"].get("image")
    entry = lock_entry(lock, key)
    args, env = backend_selection(entry["version"], arm)
    digest = digest or entry.get("digest")
    base = f"{entry['image']}:{entry['tag']}"
    spec = ImageSpec(
        key=key,
        experiment=cfg["experiment"],
        arm=arm["name"],
        gpu_type=gpu_type,
        base=base,
        digest=digest,
        backend=arm.get("backend"),
        backend_args=list(args),
        backend_env=dict(env),
        variant=arm.get("variant"),
    )
    spec.labels = {
        f"{LABEL_PREFIX}.engine": key,
        f"{LABEL_PREFIX}.engine-version": str(entry["version"]),
        f"{LABEL_PREFIX}.backend": arm.get("backend") or "default",
        f"{LABEL_PREFIX}.arm": arm["name"],
        f"{LABEL_PREFIX}.variant": arm.get("variant") or "none",
        f"{LABEL_PREFIX}.gpu-type": gpu_type,
        f"{LABEL_PREFIX}.base": base,
        f"{LABEL_PREFIX}.lock-digest": entry.get("digest") or "unpinned",
    }
    return spec


def image_files(cfg: dict, arm_name: str, gpu_type: str, results_dir: str | os.PathLike) -> list[str]:
    """What a run of the arm needs from the image rules (containers.smk): for docker the build record; for apptainer
    the arm's layer record, the base image and the versions seen inside it. Empty for runtime venv/native."""
    runtime = cfg["engine"]["runtime"]
    key = cfg["engine"].get("image")
    if runtime == "docker":
        return [str(Path(results_dir) / "images" / key / gpu_type / f"{arm_name}.json")]
    if runtime == "apptainer":
        return [
            str(
                apptainer_exec.layer_path(results_dir, key, gpu_type, arm_name)
                .with_suffix("")
                .with_suffix(".layer.json")
            ),
            str(apptainer_exec.base_sif(key)),
            str(apptainer_exec.base_versions_path(key)),
        ]
    return []


def image_for(cfg: dict, arm: dict, *, gpu_type: str | None = None) -> str:
    """The image a run uses: the engine line's base .sif (apptainer; the arm's layer is applied at exec time) or the
    arm's docker tag (docker)."""
    if cfg["engine"]["runtime"] == "apptainer":
        return str(apptainer_exec.base_sif(cfg["engine"]["image"]))
    gpu_type = gpu_type or resolve_gpu_type(cfg)
    entry = lock_entry(load_lock(), cfg["engine"]["image"])
    spec = ImageSpec(
        key=cfg["engine"]["image"],
        experiment=cfg["experiment"],
        arm=arm["name"],
        gpu_type=gpu_type,
        base=f"{entry['image']}:{entry['tag']}",
        digest=None,
        backend=None,
        backend_args=[],
        backend_env={},
        variant=None,
    )
    return spec.tag


# --- rendering --------------------------------------------------------------------------------------------------


def _template(key: str, kind: str) -> string.Template:
    path = CONTAINERS_DIR / key / f"{kind}.in"
    if not path.is_file():
        raise ContainerError(f"engine line {key} has no {kind} template ({path})")
    return string.Template(path.read_text(encoding="utf-8"))


def _env(spec: ImageSpec) -> dict[str, str]:
    # ATTNBENCH_* name the image from inside (probe_versions.py records them), whatever runs it.
    env = {
        **spec.backend_env,
        "ATTNBENCH_ENGINE": spec.key,
        "ATTNBENCH_ARM": spec.arm,
        "ATTNBENCH_GPU_TYPE": spec.gpu_type,
    }
    if spec.variant:
        env["PYTHONPATH"] = VARIANT_TARGET
        env["ATTNBENCH_VARIANT"] = spec.variant
    return env


def render_dockerfile(spec: ImageSpec) -> str:
    env = _env(spec)
    copy_lines = f"COPY variant {VARIANT_TARGET}" if spec.variant else ""
    run_lines = (
        f"RUN if [ -f {VARIANT_TARGET}/install.sh ]; then sh {VARIANT_TARGET}/install.sh; fi" if spec.variant else ""
    )
    env_lines = "\n".join(f"ENV {k}={json.dumps(v)}" for k, v in sorted(env.items()))
    label_lines = "\n".join(f"LABEL {k}={json.dumps(v)}" for k, v in sorted(spec.labels.items()))
    args_json = "".join(", " + json.dumps(a) for a in spec.backend_args)
    text = _template(spec.key, "Dockerfile").substitute(
        base_ref=spec.base_ref,
        copy_lines=copy_lines,
        env_lines=env_lines,
        run_lines=run_lines,
        label_lines=label_lines,
        backend_args_json=args_json,
    )
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"
