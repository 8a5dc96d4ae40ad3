"""Moving an Apptainer base image to a host without network.

`attnbench image export` writes the base image as checksummed parts with its records; `attnbench image import` joins
them on the other host, refuses an image whose checksum or lock differs from the checkout's, and puts the files where
the workflow looks, so Snakemake plans no build there."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

from attnbench.engines.apptainer_exec import base_dir, base_record_path, base_sif, base_versions_path
from attnbench.engines.files import read_json, sha256_file, write_json
from attnbench.engines.lock import requirements_sha256
from attnbench.errors import ContainerError

EXPORT_SCHEMA = 1


def export_image(key: str, out: Path, *, images_dir: str | os.PathLike | None = None, part_mib: int = 60) -> dict:
    """Write <out>/<key>.export.json and <out>/<key>.partNNN: the base SIF in parts of part_mib MiB, each with its
    sha256, plus base.json and base.versions.json."""
    record = read_json(base_record_path(key, images_dir))
    sif = base_sif(key, images_dir)
    if record is None or not sif.is_file():
        raise ContainerError(f"no built base image {sif} (with base.json) to export")
    if sha256_file(sif) != record["sif_sha256"]:
        raise ContainerError(f"{sif} does not match the sha256 in base.json; rebuild it before exporting")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    size = part_mib << 20
    with sif.open("rb") as fh:
        index = 0
        while chunk := fh.read(size):
            name = f"{key}.part{index:03d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
            index += 1
    manifest = {
        "schema": EXPORT_SCHEMA,
        "key": key,
        "base": record,
        "parts": parts,
        "versions": read_json(base_versions_path(key, images_dir)),
        "definition": (base_dir(key, images_dir) / "base.def").read_text(encoding="utf-8")
        if (base_dir(key, images_dir) / "base.def").is_file()
        else None,
    }
    write_json(out / f"{key}.export.json", manifest)
    return manifest


def import_image(src: Path, lock: dict, *, key: str | None = None, images_dir: str | os.PathLike | None = None) -> dict:
    """Join an export's parts into results/images/<key>/base.sif after checking every part, the whole SIF and the
    lock against this checkout's; write base.json (and base.versions.json). Newer than every input of the build
    rule, so Snakemake plans no build."""
    src = Path(src)
    manifests = sorted(src.glob(f"{key or '*'}.export.json"))
    if len(manifests) != 1:
        raise ContainerError(f"{src}: expected one <key>.export.json, found {len(manifests)}")
    manifest = read_json(manifests[0])
    if not isinstance(manifest, dict) or manifest.get("schema") != EXPORT_SCHEMA or "base" not in manifest:
        raise ContainerError(f"{manifests[0]}: not an attnbench image export (schema {EXPORT_SCHEMA})")
    key = manifest["key"]
    record = manifest["base"]
    want_lock = requirements_sha256(lock, key)
    if record.get("lock_sha256") != want_lock:
        raise ContainerError(
            f"image {key} in {src} was built from a lock with sha256 {record.get('lock_sha256')}; "
            f"this checkout's lock has {want_lock}: refusing it"
        )
    out_dir = base_dir(key, images_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "base.sif.partial"
    whole = hashlib.sha256()
    with partial.open("wb") as fh:
        for part in manifest["parts"]:
            path = src / Path(part["name"]).name
            if not path.is_file():
                partial.unlink(missing_ok=True)
                raise ContainerError(f"{src}: part {part['name']} is missing")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                partial.unlink(missing_ok=True)
                raise ContainerError(f"{path}: sha256 differs from the export's; the part is damaged")
            whole.update(data)
            fh.write(data)
    if whole.hexdigest() != record["sif_sha256"]:
        partial.unlink(missing_ok=True)
        raise ContainerError(f"joined image sha256 {whole.hexdigest()} differs from base.json's {record['sif_sha256']}")
    partial.replace(base_sif(key, images_dir))
    if manifest.get("definition"):
        (out_dir / "base.def").write_text(manifest["definition"], encoding="utf-8")
    if manifest.get("versions"):
        write_json(base_versions_path(key, images_dir), manifest["versions"])
    write_json(base_record_path(key, images_dir), {**record, "imported": datetime.now(timezone.utc).isoformat()})
    return record
