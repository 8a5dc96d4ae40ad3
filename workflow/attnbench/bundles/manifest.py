"""The manifest of a result bundle: its format (canonical JSON, digests of the whole and of the sealed sections),
its name, and `describe`, the part derived from the files of an experiment folder. bundle.py writes it and verify.py
recomputes it from the extracted files; both read this module, so neither needs the other's code."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import attnbench
from attnbench import safejson
from attnbench.engines import provenance
from attnbench.layout import run_dir

# 2: server logs enter with their request lines' prompts elided, and the manifest's `elided` section records each
# changed log's original (its sha256, bytes and lines). Version 1 bundles (logs as written) still verify.
BUNDLE_SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
# Manifest fields not derivable from the bundled files, by bundle schema version: each gets its own digest.
SEALED_BY_VERSION = {1: ("attnbench", "config"), 2: ("attnbench", "config", "elided")}
SEALED_SECTIONS = SEALED_BY_VERSION[BUNDLE_SCHEMA_VERSION]


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
            run = safejson.read_json(rdir / "run.json")
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
                "kernel_families": _kernel_families(run, safejson.read_json(rdir / "kernels.json")),
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
