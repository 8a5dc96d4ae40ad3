"""Building docker engine images through the docker SDK (Docker, or podman's compatible API via DOCKER_HOST), and
what a build leaves: image.json with the image ID, the base's digest and the versions seen inside.

Pinning: a lock entry's `digest` pins the base image (`From: image@sha256:...`). With digest null the build refuses
unless the config sets `engine.allow_unpinned: true`; it then builds from the tag, and records whatever digest it
could resolve (skopeo/docker inspect) next to `pinned: false` in image.json, which run provenance copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from attnbench.engines.compat import check_compatible
from attnbench.engines.files import write_json
from attnbench.engines.images import ImageSpec, image_spec, render_dockerfile
from attnbench.engines.lock import CONTAINERS_DIR, load_lock, lock_entry, variant_dir
from attnbench.errors import ConfigError, ContainerError

PROBE_SCRIPT = CONTAINERS_DIR / "probe_versions.py"


# --- digests ------------------------------------------------------------------------------------------------------


def resolve_digest(base: str) -> str | None:
    """The registry digest of `image:tag` via skopeo, when skopeo and the registry are reachable; else None."""
    if shutil.which("skopeo") is None:
        return None
    try:
        proc = subprocess.run(
            ["skopeo", "inspect", "--no-tags", f"docker://{base}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout).get("Digest")


def require_pinned(cfg: dict, entry: dict, key: str) -> None:
    if entry.get("digest") or entry.get("local"):
        return
    if not cfg["engine"].get("allow_unpinned", False):
        raise ContainerError(
            f"engine image {key} ({entry['image']}:{entry['tag']}) has no digest in containers/lock.yaml, so the build "
            f"would not be reproducible. Resolve it with `{entry.get('resolve', 'skopeo inspect')}` and write it into "
            f"the lock file, or set engine.allow_unpinned: true to build from the tag (recorded as unpinned)"
        )


# --- building -----------------------------------------------------------------------------------------------------


def docker_client(client=None):
    if client is not None:
        return client
    import docker

    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise ContainerError(
            f"no Docker API reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {exc}"
        ) from None


def build_docker(spec: ImageSpec, dockerfile_out: Path, client=None) -> dict:
    """Build through the docker SDK from a temporary context holding the Dockerfile and the variant folder. The base
    is never pulled implicitly: a pinned base is pulled by digest first (when a registry is reachable), a local one
    must exist."""
    import docker

    client = docker_client(client)
    text = render_dockerfile(spec)
    Path(dockerfile_out).parent.mkdir(parents=True, exist_ok=True)
    Path(dockerfile_out).write_text(text, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="attnbench-build-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(text, encoding="utf-8")
        if spec.variant:
            shutil.copytree(variant_dir(spec.variant), Path(ctx) / "variant")
        try:
            image, _ = client.images.build(path=ctx, tag=spec.tag, pull=False, rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            lines = [c.get("stream", c.get("error", "")).strip() for c in exc.build_log if isinstance(c, dict)]
            raise ContainerError(
                f"docker build {spec.tag} failed: {exc.msg}; " + " | ".join(x for x in lines if x)[-800:]
            ) from None
        except docker.errors.APIError as exc:
            raise ContainerError(f"docker build {spec.tag} failed: {exc.explanation or exc}") from None
    return {"ref": spec.tag, "image_id": image.id, "dockerfile": str(dockerfile_out)}


def inspect_docker_image(ref: str, client=None) -> dict:
    """Facts about a local image: its ID, the registry digests it carries, its labels."""
    import docker

    client = docker_client(client)
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise ContainerError(f"image {ref} is not present (build it first: attnbench image build)") from None
    return {"image_id": image.id, "repo_digests": image.attrs.get("RepoDigests") or [], "labels": image.labels or {}}


def probe_docker_versions(ref: str, client=None) -> dict:
    """Run containers/probe_versions.py in a throwaway container of `ref`: the versions as the engine sees them."""
    import docker

    client = docker_client(client)
    try:
        out = client.containers.run(
            ref,
            entrypoint=["python3", "-c", PROBE_SCRIPT.read_text(encoding="utf-8")],
            command=[],
            remove=True,
            stdout=True,
            stderr=False,
        )
    except docker.errors.ContainerError as exc:
        raise ContainerError(f"version probe in {ref} failed: {exc.stderr!r}"[:500]) from None
    return json.loads(out)


def build_image(cfg: dict, arm: dict, gpu_type: str, out: Path, *, lock: dict | None = None, client=None) -> dict:
    """Check the pair, render, build, and write `out` (image.json: what was built and how it is pinned).
    Returns that record."""
    lock = lock or load_lock()
    check_compatible(cfg, gpu_type, lock, [arm])
    key = cfg["engine"].get("image")
    entry = lock_entry(lock, key)
    require_pinned(cfg, entry, key)
    resolved = entry.get("digest") or (
        None if entry.get("local") else resolve_digest(f"{entry['image']}:{entry['tag']}")
    )
    spec = image_spec(cfg, arm, gpu_type, lock, digest=resolved)
    out = Path(out)
    runtime = cfg["engine"]["runtime"]
    if runtime == "apptainer":
        raise ConfigError(
            "runtime apptainer builds one base image per engine line (attnbench image build-base) and a "
            "layer per arm (attnbench image layer), not a full image per arm"
        )
    if runtime == "docker":
        built = build_docker(spec, out.with_suffix(".Dockerfile"), client)
        facts = inspect_docker_image(spec.tag, client)
        built["versions"] = probe_docker_versions(spec.tag, client)
        if entry.get("local"):  # a local base has no registry digest; its image ID is what pins it
            facts_base = inspect_docker_image(spec.base, client)
            resolved = facts_base["image_id"]
        built["labels"] = facts["labels"]
    else:
        raise ConfigError(f"engine.runtime: {runtime!r} has no image to build; images are for docker and apptainer")
    record = {
        "schema": 1,
        "key": key,
        "engine_version": entry["version"],
        "runtime": runtime,
        "experiment": cfg["experiment"],
        "arm": arm["name"],
        "backend": arm.get("backend"),
        "variant": arm.get("variant"),
        "gpu_type": gpu_type,
        "base": spec.base,
        "base_ref": spec.base_ref,
        "lock_digest": entry.get("digest"),
        "resolved_digest": resolved,
        "pinned": bool(entry.get("digest")) or bool(entry.get("local")),
        "backend_env": spec.backend_env,
        "backend_args": spec.backend_args,
        "labels": spec.labels,
        "built": datetime.now(timezone.utc).isoformat(),
        **built,
    }
    write_json(out, record)
    return record
