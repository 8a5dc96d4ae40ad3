"""The engine-image lock (containers/lock.yaml) and the container definitions folder next to it: which engine lines
exist, what each pins, where an arm's variant files are and which requirements lock an Apptainer base image is built
from. Every image module reads the lock through here; this module imports no other engines module."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from attnbench.engines.files import sha256_file
from attnbench.errors import ConfigError, ContainerError
from attnbench.paths import REPO_ROOT

CONTAINERS_DIR = REPO_ROOT / "containers"
LOCK_PATH = CONTAINERS_DIR / "lock.yaml"


def load_lock(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path else LOCK_PATH
    try:
        lock = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContainerError(f"lock file {path} does not exist") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("images"), dict):
        raise ContainerError(f"lock file {path}: expected a mapping with 'images'")
    return lock


def lock_entry(lock: dict, key: str | None) -> dict:
    if key not in lock["images"]:
        raise ConfigError(
            f"engine.image: {key!r} is not in containers/lock.yaml; known: {', '.join(sorted(lock['images']))}"
        )
    return lock["images"][key]


def variant_dir(variant: str) -> Path:
    path = CONTAINERS_DIR / "variants" / variant
    if not path.is_dir():
        raise ContainerError(f"variant {variant!r}: folder {path} does not exist (its definition lives there)")
    return path


def build_spec(entry: dict, key: str) -> dict:
    """The lock entry's `apptainer` section, checked: how the base image of this engine line is built."""
    spec = entry.get("apptainer")
    if not isinstance(spec, dict) or not spec.get("requirements"):
        raise ContainerError(
            f"containers/lock.yaml: {key} has no apptainer.requirements, so no Apptainer base image can be built for it"
        )
    return spec


def requirements_path(entry: dict, key: str) -> Path:
    path = REPO_ROOT / build_spec(entry, key)["requirements"]
    if not path.is_file():
        raise ContainerError(f"containers/lock.yaml: {key}: requirements lock {path} does not exist")
    return path


def requirements_sha256(lock: dict, key: str) -> str:
    """sha256 of the requirements lock an engine line's Apptainer base image is built from: what ties a built or
    imported image to this checkout."""
    return sha256_file(requirements_path(lock_entry(lock, key), key))
