"""Helpers for the tamper corpus and the fuzz test: extract a bundle, edit its files, and reseal it the way a
careful forger would (tables, report, derived manifest fields, checksums, section and manifest digests all
recomputed), so that only the checks that reach below the checksums can catch the edit."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from attnbench.analysis import aggregate, report
from attnbench.bundles import bundle, verify


def extract(path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    assert verify.safe_extract(path, dest) == []
    return dest


def pack(src: Path, out: Path) -> Path:
    """Deterministic re-pack of an extracted bundle folder (manifest first, as bundle.write_archive does)."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src / "manifest.json", arcname="manifest.json")
        for p in sorted(src.rglob("*")):
            if p.is_file() and p != src / "manifest.json":
                tar.add(p, arcname=p.relative_to(src).as_posix())
    return out


def reseal(root: Path, *, tables: bool = True, derived: bool = True) -> None:
    """Recompute everything that can be recomputed from the (edited) files."""
    manifest = json.loads((root / "manifest.json").read_text())
    cfg = manifest["config"]
    if tables:
        try:
            aggregate.write_tables(root, cfg)
            report.write_report(root, cfg)
        except Exception:  # some edits leave nothing to tabulate; the forger reseals the rest
            pass
    if derived:
        manifest.update(bundle.describe(root, cfg))
    manifest["files"] = {
        p.relative_to(root).as_posix(): {"sha256": bundle.sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / "manifest.json"
    }
    manifest["section_sha256"] = {k: bundle.section_digest(manifest[k]) for k in bundle.SEALED_SECTIONS}
    manifest["manifest_sha256"] = bundle.manifest_digest(manifest)
    (root / "manifest.json").write_text(bundle.canonical_json(manifest))


def edit_jsonl(path: Path, edit: Callable[[list[dict]], None]) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    edit(lines)
    path.write_text("".join(json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n" for d in lines))


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1))


def edit_config(root: Path, edit: Callable[[dict], None]) -> None:
    edit_json(root / "manifest.json", lambda m: edit(m["config"]))


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()
