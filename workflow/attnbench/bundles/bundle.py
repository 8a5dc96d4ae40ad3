"""Write a result bundle: one deterministic tar.gz that a peer can verify, compare and merge.

A bundle holds an experiment folder's raw records, run.json files, redacted server logs, derived tables, plots and
report, plus `manifest.json`: what was run (the resolved config), where (host, GPU, engine), what each arm asked for and
got (backend, kernel families), which runs are missing or failed, and a SHA-256 for every file. Member paths mirror
`results/<exp>/`, so an extracted bundle is itself an experiment folder that `aggregate.build_tables` can read.

The archive is byte-for-byte reproducible: sorted members, fixed mtime/uid/gid/mode and a gzip header without a
timestamp, so the same inputs always give the same file and its digest can be quoted.

`attnbench verify` (verify.py) rebuilds the derivable part of the manifest with `describe()` below and compares it
field by field, which is why everything in the manifest that can be recomputed from the files comes from there.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import attnbench
from attnbench.engines import provenance
from attnbench.errors import BundleError

BUNDLE_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Files kept from each run folder (runs/<arm>/rep<k>/); profiler traces in subfolders stay out (large, not needed
# to recompute anything: kernels.json holds their attribution).
# openloop*.jsonl and servermetrics.jsonl exist where a run had open-loop rates or scraped the server's /metrics.
RUN_FILES = (
    "records.jsonl",
    "levels.jsonl",
    "server.log",
    "run.json",
    "kernels.json",
    "gpu.jsonl",
    "openloop.jsonl",
    "openloop_levels.jsonl",
    "servermetrics.jsonl",
)
# Derived outputs copied whole, relative to the experiment folder.
DERIVED_DIRS = ("tables", "plots")
DERIVED_FILES = ("report.md", "report.html")
# Suffixes read as text and scrubbed of secrets before they enter the bundle.
TEXT_SUFFIXES = {".jsonl", ".json", ".log", ".txt", ".md", ".csv", ".svg", ".html", ".yaml"}
FIXED_MTIME = 0
REDACTED = provenance.REDACTED
SEALED_SECTIONS = ("attnbench", "config")  # manifest fields not derivable from the bundled files


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


# --- describing an experiment folder ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(obj) -> str:
    """The manifest's one serialization. Keys keep their order: the config's order of arms and workloads is
    meaningful (tables follow it), and every dict here is built in a fixed order, so the bytes are still stable."""
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def manifest_digest(manifest: dict) -> str:
    """Digest of the manifest without its own digest field: catches any hand edit, including of fields that
    nothing else can recompute (attnbench version, git commit, config)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def section_digest(value) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def run_dir(exp_dir: Path, arm: str, repeat: int) -> Path:
    return exp_dir / "runs" / arm / f"rep{repeat}"


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None


def _kernel_families(run: dict, kernels_json: dict | None) -> list[str]:
    for source in ((run or {}).get("kernels"), kernels_json):
        if isinstance(source, dict) and isinstance(source.get("families"), dict):
            return sorted(source["families"])
    return []


def _expected_backend(arm: dict) -> str | None:
    return arm.get("expect_backend") or arm.get("backend")


def _first_gpu(host: dict) -> dict:
    gpus = host.get("gpus") or []
    return gpus[0] if gpus and isinstance(gpus[0], dict) else {}


def _host_summary(host: dict) -> dict:
    gpu = _first_gpu(host)
    return {
        "gpu_type": host.get("gpu_type"),
        "gpu_name": gpu.get("name"),
        "gpu_count": len(host.get("gpus") or []),
        "compute_capability": gpu.get("compute_cap", gpu.get("compute_capability")),
        "gpu_memory_mib": gpu.get("memory_mib"),
        "driver": host.get("driver") or gpu.get("driver"),
        "cuda": host.get("cuda"),
        "cpu": host.get("cpu"),
        "hostname_hash": host.get("hostname_hash"),
        "gpus": host.get("gpus") or [],
    }


def describe(exp_dir: Path, cfg: dict) -> dict:
    """The part of the manifest that is derived from the files of an experiment folder: host, engine, per-arm
    backend evidence, run statuses and times, and which configured runs are missing. Build and verify both call
    this, so a manifest whose derived fields were edited no longer matches."""
    exp_dir = Path(exp_dir)
    repeats = int((cfg.get("sweep") or {}).get("repeats", 1))
    arms_out, missing, runs_seen = [], [], []
    for arm in cfg.get("arms") or []:
        runs = []
        for k in range(repeats):
            rdir = run_dir(exp_dir, arm["name"], k)
            run = _load_json(rdir / "run.json")
            has_records = (rdir / "records.jsonl").exists()
            if run is None:
                missing.append(
                    {
                        "arm": arm["name"],
                        "repeat": k,
                        "reason": "incomplete: records without run.json" if has_records else "not run",
                    }
                )
                if has_records:
                    runs.append({"repeat": k, "status": "incomplete", "path": rdir.relative_to(exp_dir).as_posix()})
                continue
            backend = run.get("backend") or {}
            entry = {
                "repeat": k,
                "path": rdir.relative_to(exp_dir).as_posix(),
                "status": run.get("status"),
                "error": run.get("error"),
                "started": run.get("started"),
                "finished": run.get("finished"),
                "requested_backend": backend.get("requested", arm.get("backend")),
                "logged_backend": backend.get("logged"),
                "backend_match": backend.get("match"),
                "kernel_families": _kernel_families(run, _load_json(rdir / "kernels.json")),
                "gpu_type": (run.get("host") or {}).get("gpu_type"),
                "slurm_job_id": run.get("slurm_job_id"),
            }
            runs.append(entry)
            runs_seen.append(run)
            if run.get("status") != "ok":
                missing.append({"arm": arm["name"], "repeat": k, "reason": f"failed: {run.get('error')}"})
        arms_out.append(
            {
                "name": arm["name"],
                "requested_backend": arm.get("backend"),
                "expect_backend": _expected_backend(arm),
                "allow_backend_mismatch": bool(arm.get("allow_backend_mismatch", False)),
                "logged_backends": sorted({r["logged_backend"] for r in runs if r.get("logged_backend")}),
                "kernel_families": sorted({f for r in runs for f in r.get("kernel_families", [])}),
                "runs": runs,
            }
        )
    ok_runs = [r for r in runs_seen if r.get("status") == "ok"] or runs_seen
    first = ok_runs[0] if ok_runs else {}
    host = first.get("host") or {}
    starts = sorted(r["started"] for r in runs_seen if r.get("started"))
    ends = sorted(r["finished"] for r in runs_seen if r.get("finished"))
    engine = first.get("engine") or {}
    host_summary = _host_summary(host)
    # run.json keeps the CUDA runtime with the engine (it is the engine's torch that brings it)
    host_summary["cuda"] = host_summary["cuda"] or (engine.get("versions") or {}).get("cuda")
    return {
        "experiment": cfg.get("experiment"),
        "gpu_type": gpu_type_of(runs_seen, cfg),
        "host": host_summary,
        "engine": engine,
        "arms": arms_out,
        "started": starts[0] if starts else None,
        "finished": ends[-1] if ends else None,
        "complete": not missing,
        "missing": missing,
    }


def gpu_type_of(runs: list[dict], cfg: dict) -> str:
    for run in runs:
        gpu_type = (run.get("host") or {}).get("gpu_type")
        if gpu_type:
            return gpu_type
    fixed = (cfg.get("gpu") or {}).get("type")
    return fixed if fixed and fixed != "auto" else "unknown"


def attnbench_info() -> dict:
    """Version and git commit of the code that writes the bundle; the commit is null, with the command that
    resolves it, when the package is not in a git checkout."""
    repo = Path(attnbench.__file__).resolve().parent
    git = provenance.git_commit(repo)
    info = {"version": attnbench.__version__, "git_commit": git["commit"], "git_dirty": git["dirty"]}
    if git["commit"] is None:
        info["unresolved"] = f"git -C {repo} rev-parse HEAD"
    return info


# --- writing ----------------------------------------------------------------------------------------------------


def collect_files(exp_dir: Path, cfg: dict) -> list[str]:
    """Relative paths (posix) of everything that goes into the bundle, sorted."""
    exp_dir = Path(exp_dir)
    found: set[str] = set()
    repeats = int((cfg.get("sweep") or {}).get("repeats", 1))
    for arm in cfg.get("arms") or []:
        for k in range(repeats):
            rdir = run_dir(exp_dir, arm["name"], k)
            found.update(str((rdir / n).relative_to(exp_dir).as_posix()) for n in RUN_FILES if (rdir / n).is_file())
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


def stage(exp_dir: Path, cfg: dict, dest: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Copy the bundle's files into dest, scrubbing secrets from text files on the way."""
    secrets = secret_values(cfg, environ)
    paths = collect_files(exp_dir, cfg)
    for rel in paths:
        src, dst = Path(exp_dir) / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(rel).suffix in TEXT_SUFFIXES:
            text = src.read_text(encoding="utf-8", errors="surrogateescape")
            dst.write_text(scrub(text, secrets), encoding="utf-8", errors="surrogateescape")
        else:
            shutil.copyfile(src, dst)
    return paths


def build_manifest(staged: Path, cfg: dict, paths: list[str], secrets: list[str] = ()) -> dict:
    manifest = {
        "bundle_schema": BUNDLE_SCHEMA_VERSION,
        "attnbench": attnbench_info(),
        # The config names env vars, not keys; scrubbed anyway in case a key was pasted into engine.env.
        "config": json.loads(scrub(json.dumps(cfg), list(secrets))),
        **describe(staged, cfg),
        "files": {rel: {"sha256": sha256_file(staged / rel), "bytes": (staged / rel).stat().st_size} for rel in paths},
    }
    # Fields nothing in the bundle can recompute get their own digest, so that an edit is named by section.
    manifest["section_sha256"] = {k: section_digest(manifest[k]) for k in SEALED_SECTIONS}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return manifest


def bundle_name(manifest: dict) -> str:
    """bundle-<gpu-type>-<yyyymmdd>.tar.gz, dated by the last run's end so that rebuilding gives the same name."""
    when = manifest.get("finished") or manifest.get("started")
    try:
        day = datetime.fromisoformat(when).astimezone(timezone.utc).strftime("%Y%m%d") if when else None
    except ValueError:
        day = None
    day = day or datetime.now(timezone.utc).strftime("%Y%m%d")
    gpu = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest.get("gpu_type") or "unknown")
    return f"bundle-{gpu}-{day}.tar.gz"


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
        paths = stage(exp_dir, cfg, staged, environ)
        if not paths:
            raise BundleError(f"{exp_dir}: nothing to bundle (no runs, tables or plots for the configured arms)")
        manifest = build_manifest(staged, cfg, paths, secret_values(cfg, environ))
        out = Path(out) if out is not None else exp_dir
        target = out if out.name.endswith(".tar.gz") else out / bundle_name(manifest)
        write_archive(staged, manifest, target)
    return target


# --- CLI --------------------------------------------------------------------------------------------------------


def _load_cfg(path: str) -> dict:
    from attnbench import config  # noqa: PLC0415  (config.py belongs to the pipeline; imported when used)

    return config.load_config(path)


def _cmd_bundle(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args.config)
    path = build_bundle(Path(args.exp_dir), cfg, Path(args.out) if args.out else None)
    print(path)
    if args.sign_key:  # a detached SSH signature beside the archive: the archive's bytes stay reproducible
        from attnbench.bundles import signing  # noqa: PLC0415

        print(signing.sign(path, Path(args.sign_key)))
    if args.verify:  # the pipeline's last step checks its own bundle the way a peer will
        from attnbench.bundles.verify import report_result, verify_bundle  # noqa: PLC0415

        status = report_result(str(path), verify_bundle(path))
        if status:
            return status
    if args.receipt:
        receipt = Path(args.receipt)
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.write_text(f"{sha256_file(path)}  {path.name}\n", encoding="utf-8")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bundle", help="write a verifiable result bundle (tar.gz + manifest + sha256)")
    p.add_argument("exp_dir", help="experiment folder, e.g. results/demo")
    p.add_argument("--config", required=True, help="the experiment config YAML")
    p.add_argument("--out", help="output folder or .tar.gz path (default: EXP_DIR/bundle-<gpu-type>-<yyyymmdd>.tar.gz)")
    p.add_argument("--receipt", help="also write '<sha256>  <bundle name>' to this file (the Snakemake target)")
    p.add_argument("--sign-key", help="Ed25519 OpenSSH private key: also write BUNDLE.sig (ssh-keygen -Y sign)")
    p.add_argument("--verify", action="store_true", help="verify the written bundle; exit 1 (no receipt) if it fails")
    p.set_defaults(func=_cmd_bundle)

    from attnbench.bundles import verify  # noqa: PLC0415  (cli.py lists modules; verify rides along with bundle)

    verify.register(subparsers)
