"""Write a result bundle: one deterministic tar.gz that a peer can verify, compare and merge.

A bundle holds an experiment folder's raw records, run.json files, redacted server logs (request lines without
their prompts: serverlog.py), derived tables, plots and report, plus `manifest.json`: what was run (the resolved
config), where (host, GPU, engine), what each arm asked for and got (backend, kernel families), which runs are
missing or failed, a SHA-256 for every file, and the sha256, size and line count of each server log as the run wrote
it where the bundle's copy lost prompts. Member paths mirror `results/<exp>/`, so an extracted bundle is itself an
experiment folder that `aggregate.build_tables` can read.

The archive is byte-for-byte reproducible: sorted members, fixed mtime/uid/gid/mode and a gzip header without a
timestamp, so the same inputs always give the same file and its digest can be quoted.

`attnbench verify` (verify.py) rebuilds the derivable part of the manifest with `manifest.describe()` and compares it
field by field, which is why everything in the manifest that can be recomputed from the files comes from there.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from attnbench.analysis.aggregate import experiment_parser, load_cfg
from attnbench.bundles import serverlog, signing, verify
from attnbench.bundles.manifest import (
    BUNDLE_SCHEMA_VERSION,
    MANIFEST,
    SEALED_SECTIONS,
    attnbench_info,
    bundle_name,
    canonical_json,
    describe,
    manifest_digest,
    section_digest,
)
from attnbench.engines import provenance
from attnbench.engines.files import sha256_file
from attnbench.errors import BundleError
from attnbench.layout import OPTIONAL_RUN_FILES, RUN_FILES, run_dir

# Files kept from each run folder (runs/<arm>/rep<k>/); profiler traces in subfolders stay out (large, not needed
# to recompute anything: kernels.json holds their attribution).
BUNDLED_RUN_FILES = RUN_FILES + OPTIONAL_RUN_FILES
# Derived outputs copied whole, relative to the experiment folder.
DERIVED_DIRS = ("tables", "plots")
DERIVED_FILES = ("report.md", "report.html")
# Suffixes read as text and scrubbed of secrets before they enter the bundle.
TEXT_SUFFIXES = {".jsonl", ".json", ".log", ".txt", ".md", ".csv", ".svg", ".html", ".yaml"}
# Run files whose request-log lines lose their prompts on the way in (serverlog.py says why).
ELIDED_NAMES = {"server.log"}
FIXED_MTIME = 0
REDACTED = provenance.REDACTED


# --- secrets ----------------------------------------------------------------------------------------------------


def secret_values(cfg: dict, environ: dict[str, str] | None = None) -> list[str]:
    """Values to blank (provenance's one policy), plus the value of the variable the config names for the API
    key, whatever its name and shape."""
    environ = os.environ if environ is None else environ
    key_env = (cfg.get("sweep") or {}).get("api_key_env")
    return provenance.secret_values(environ, extra=[environ.get(key_env) if key_env else None])


def scrub(text: str, secrets: list[str]) -> str:
    """Blank secrets in text. Runs again over files their writers already redacted, because a bundle leaves the
    machine: a key that slipped into one log must not travel with it."""
    return provenance.redact_text(text, secrets)


# --- writing ----------------------------------------------------------------------------------------------------


def collect_files(exp_dir: Path, cfg: dict) -> list[str]:
    """Relative paths (posix) of everything that goes into the bundle, sorted."""
    exp_dir = Path(exp_dir)
    found: set[str] = set()
    repeats = int((cfg.get("sweep") or {}).get("repeats", 1))
    for arm in cfg.get("arms") or []:
        for k in range(repeats):
            rdir = run_dir(exp_dir, arm["name"], k)
            found.update((rdir / n).relative_to(exp_dir).as_posix() for n in BUNDLED_RUN_FILES if (rdir / n).is_file())
    for sub in DERIVED_DIRS:
        base = exp_dir / sub
        if base.is_dir():
            found.update(
                p.relative_to(exp_dir).as_posix() for p in base.rglob("*") if p.is_file() and not p.is_symlink()
            )
    found.update(n for n in DERIVED_FILES if (exp_dir / n).is_file())
    # The engine's pinned lock (pip freeze) is its identity when it runs from a venv.
    found.update(p.relative_to(exp_dir).as_posix() for p in exp_dir.glob("engine/*/engine-lock.txt") if p.is_file())
    return sorted(found)


def original_facts(src: Path, text: str, elided_lines: int) -> dict:
    """What the bundle records of a log it changed, so that whoever holds the experiment folder can tie the bundled
    copy to the file the run wrote (same lines, in the same order; elided_lines of them shortened)."""
    return {
        "original_sha256": sha256_file(src),
        "original_bytes": src.stat().st_size,
        "original_lines": serverlog.count_lines(text),
        "elided_lines": elided_lines,
    }


def stage(
    exp_dir: Path, cfg: dict, dest: Path, environ: dict[str, str] | None = None
) -> tuple[list[str], dict[str, dict]]:
    """Copy the bundle's files into dest, eliding prompts from server logs and scrubbing secrets from text files on
    the way. Returns the paths and, for each log that lost a prompt, its original_facts."""
    secrets = secret_values(cfg, environ)
    paths = collect_files(exp_dir, cfg)
    elided: dict[str, dict] = {}
    for rel in paths:
        src, dst = Path(exp_dir) / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(rel).suffix in TEXT_SUFFIXES:
            # Decoded from bytes, not read as text: no newline translation, so what neither filter touches stays
            # byte for byte (a log's tqdm lines keep their \r) and line counts are the file's own.
            text = src.read_bytes().decode("utf-8", errors="surrogateescape")
            if Path(rel).name in ELIDED_NAMES:
                short, lines = serverlog.elide_requests(text)
                if lines:
                    elided[rel] = original_facts(src, text, lines)
                text = short
            dst.write_bytes(scrub(text, secrets).encode("utf-8", errors="surrogateescape"))
        else:
            shutil.copyfile(src, dst)
    return paths, elided


def build_manifest(
    staged: Path, cfg: dict, paths: list[str], secrets: list[str] = (), elided: dict[str, dict] | None = None
) -> dict:
    manifest = {
        "bundle_schema": BUNDLE_SCHEMA_VERSION,
        "attnbench": attnbench_info(),
        # The config names env vars, not keys; scrubbed anyway in case a key was pasted into engine.env.
        "config": json.loads(scrub(json.dumps(cfg), list(secrets))),
        **describe(staged, cfg),
        "files": {rel: {"sha256": sha256_file(staged / rel), "bytes": (staged / rel).stat().st_size} for rel in paths},
        # The originals of the changed logs are not in the bundle: their facts are sealed like the config.
        "elided": elided or {},
    }
    # Fields nothing in the bundle can recompute get their own digest, so that an edit is named by section.
    manifest["section_sha256"] = {k: section_digest(manifest[k]) for k in SEALED_SECTIONS}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return manifest


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(staged: Path, manifest: dict, out: Path) -> None:
    """Deterministic tar.gz: manifest first, then files in sorted order, fixed metadata, no gzip timestamp.
    Written to a temporary name and renamed, so a crash never leaves a half bundle under the final name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        data = canonical_json(manifest).encode()
        tar.addfile(_tarinfo(MANIFEST, len(data)), io.BytesIO(data))
        for rel in sorted(manifest["files"]):
            path = staged / rel
            with path.open("rb") as fh:
                tar.addfile(_tarinfo(rel, path.stat().st_size), fh)
    tmp.replace(out)


def build_bundle(exp_dir: Path, cfg: dict, out: Path | None = None, *, environ: dict[str, str] | None = None) -> Path:
    """Write the bundle of one experiment folder; returns its path. `out` is a folder (the name is chosen:
    bundle-<gpu-type>-<yyyymmdd>.tar.gz) or a file name ending in .tar.gz; default: the experiment folder.
    A partial experiment (arms missing or failed) still bundles, and its manifest says what is missing."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise BundleError(f"{exp_dir}: experiment folder not found")
    with tempfile.TemporaryDirectory(prefix="attnbench-bundle-") as tmp:
        staged = Path(tmp)
        paths, elided = stage(exp_dir, cfg, staged, environ)
        if not paths:
            raise BundleError(f"{exp_dir}: nothing to bundle (no runs, tables or plots for the configured arms)")
        manifest = build_manifest(staged, cfg, paths, secret_values(cfg, environ), elided)
        out = Path(out) if out is not None else exp_dir
        target = out if out.name.endswith(".tar.gz") else out / bundle_name(manifest)
        write_archive(staged, manifest, target)
    return target


# --- CLI --------------------------------------------------------------------------------------------------------


def _cmd_bundle(args: argparse.Namespace) -> int:
    cfg = load_cfg(args.config)
    path = build_bundle(Path(args.exp_dir), cfg, Path(args.out) if args.out else None)
    print(path)
    if args.sign_key:  # a detached SSH signature beside the archive: the archive's bytes stay reproducible
        print(signing.sign(path, Path(args.sign_key)))
    if args.verify:  # the pipeline's last step checks its own bundle the way a peer will
        status = verify.report_result(str(path), verify.verify_bundle(path))
        if status:
            return status
    if args.receipt:
        receipt = Path(args.receipt)
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.write_text(f"{sha256_file(path)}  {path.name}\n", encoding="utf-8")
    return 0


def register(subparsers) -> None:
    p = experiment_parser(subparsers, "bundle", "write a verifiable result bundle (tar.gz + manifest + sha256)")
    p.add_argument("--out", help="output folder or .tar.gz path (default: EXP_DIR/bundle-<gpu-type>-<yyyymmdd>.tar.gz)")
    p.add_argument("--receipt", help="also write '<sha256>  <bundle name>' to this file (the Snakemake target)")
    p.add_argument("--sign-key", help="Ed25519 OpenSSH private key: also write BUNDLE.sig (ssh-keygen -Y sign)")
    p.add_argument("--verify", action="store_true", help="verify the written bundle; exit 1 (no receipt) if it fails")
    p.set_defaults(func=_cmd_bundle)
    verify.register(subparsers)  # cli.py lists modules; verify rides along with bundle
