"""The engines' file helpers: a file's sha256, a folder's digest, and JSON records read and written. Images, layers,
run provenance and synthetic models all use these, so that a record is written and a checksum taken one way."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(folder: Path) -> dict:
    """sha256 of every file under folder (sorted relative paths) and one digest over all of them."""
    files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    total = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in files.items()).encode()).hexdigest()
    return {"sha256": total, "files": files}


def read_json(path: str | os.PathLike) -> dict | None:
    """The record at path, or None when it is missing or not JSON (a record not written yet is not an error)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def write_json(path: str | os.PathLike, record: dict) -> None:
    """Write a record as sorted, indented JSON: through a temporary file, so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
