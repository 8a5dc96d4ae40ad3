"""What run.json records about the image an arm ran in, read from the records the image rules wrote (base.json and
the arm's layer for Apptainer, image.json for docker). Missing records give nulls, never a guess."""

from __future__ import annotations

import os
from pathlib import Path

from attnbench.engines.apptainer_exec import base_record_path, base_sif, base_versions_path
from attnbench.engines.files import read_json
from attnbench.engines.gpu import resolve_gpu_type
from attnbench.engines.images import image_files, image_for

# The versions seen inside an image that a run records.
VERSION_KEYS = ("vllm", "torch", "cuda", "xformers")


def image_provenance(
    cfg: dict, arm: dict, *, gpu_type: str | None = None, results_dir: str | os.PathLike | None = None
) -> dict:
    """What run.json records about the image an arm ran in, from the records the image rules wrote: for apptainer
    the base SIF's sha256 and size, the lock's sha256 and the arm layer's digest and variant checksum; for docker the
    reference, digest (or unpinned) and image ID; both with the versions seen inside. Missing files give nulls,
    never a guess."""
    gpu_type = resolve_gpu_type(cfg, gpu_type)
    results_dir = results_dir or Path("results") / cfg["experiment"]
    key = cfg["engine"]["image"]
    if cfg["engine"]["runtime"] == "apptainer":
        base = read_json(base_record_path(key)) or {}
        layer = read_json(Path(image_files(cfg, arm["name"], gpu_type, results_dir)[0])) or {}
        versions = read_json(base_versions_path(key)) or {}
        return {
            "image": str(base_sif(key)),
            "image_sha256": base.get("sif_sha256"),
            "image_bytes": base.get("sif_bytes"),
            "lock": base.get("requirements"),
            "lock_sha256": base.get("lock_sha256"),
            "pinned": bool(base.get("lock_sha256")),
            "layer_digest": layer.get("digest"),
            "variant": layer.get("variant"),
            "variant_sha256": layer.get("variant_sha256"),
            "imported": base.get("imported"),
            "versions": {k: versions.get(k) for k in VERSION_KEYS} if versions else {},
        }
    record = read_json(Path(image_files(cfg, arm["name"], gpu_type, results_dir)[0])) or {}
    versions = record.get("versions") or {}
    return {
        "image": record.get("ref") or image_for(cfg, arm, gpu_type=gpu_type),
        "digest": record.get("resolved_digest"),
        "pinned": record.get("pinned"),
        "image_id": record.get("image_id"),
        "base": record.get("base_ref"),
        "versions": {k: versions.get(k) for k in VERSION_KEYS} if versions else {},
    }
