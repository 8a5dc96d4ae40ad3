"""Raw records (read safely and typed by rundata.py) checked for physical and logical sense.

Checksums only say that files were not changed after the manifest was written; a forger who rewrites records and
then recomputes tables and checksums passes them. What such a forger must still get right is checked here, each
failure naming file, record and field:
- identity: each record's experiment, arm and repeat match the manifest and the folder it sits in;
- time: finite, ordered times; TTFT and the inter-token gaps fit inside the request; measured requests inside their
  level's window; levels inside their run's window and one after another;
- counts: each level's requests and warmup as the config's sweep implies (at least that many under a time floor);
- GPU identity: one GPU type across manifest and run.json files, and the type key agrees with the GPU's name,
  compute capability and memory as nvidia-smi reported them; gpu.jsonl samples come from the GPU run.json names;
- physics: no request decodes faster than the named GPU's peak memory bandwidth allows for the named model's
  weights (every decode step reads all of them once).
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from attnbench import safejson
from attnbench.bundles.finding import Finding
from attnbench.bundles.rundata import RunData
from attnbench.engines import compat, gputype
from attnbench.errors import AttnbenchError, UnsafeInputError
from attnbench.layout import run_rel
from attnbench.measure.records import LevelRecord, RequestRecord
from attnbench.measure.sweep import requests_for
from attnbench.paths import PACKAGE_DIR

BANDWIDTH_FILE = PACKAGE_DIR / "gpu_bandwidth.yaml"
EPOCH_RANGE = (1.0e9, 4.0e9)  # 2001..2096: a wall-clock time outside this is no time.time() reading
WINDOW_SLACK_S = 1.0  # run.json times are ISO strings with whole seconds
ORDER_SLACK_S = 1e-3  # itl values are rounded to 1 us each; their sum may exceed the stream by rounding


# --- checks -------------------------------------------------------------------------------------------------------


def _rid(lineno: int, rec: RequestRecord | LevelRecord) -> str:
    label = getattr(rec, "request_id", None) or f"{rec.workload} c{rec.concurrency}"
    return f"line {lineno} ({label})"


def check_identity(run: RunData, experiment: str) -> list[Finding]:
    out = []
    if run.rel != run_rel(run.arm, run.repeat):
        out.append(
            Finding("manifest.json", f"{run.arm} repeat {run.repeat} path", run_rel(run.arm, run.repeat), run.rel)
        )
    want = {"experiment": experiment, "arm": run.arm, "repeat": run.repeat}
    for name, items in (("records.jsonl", run.requests), ("levels.jsonl", run.levels)):
        for lineno, rec in items:
            for key, value in want.items():
                if getattr(rec, key) != value:
                    out.append(Finding(f"{run.rel}/{name}", f"{_rid(lineno, rec)} {key}", value, getattr(rec, key)))
    if isinstance(run.run, dict):
        for key, value in want.items():
            if key in run.run and run.run[key] != value:
                out.append(Finding(f"{run.rel}/run.json", key, value, run.run[key]))
    return out


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def check_request_times(run: RunData) -> list[Finding]:
    rel = f"{run.rel}/records.jsonl"
    out = []
    for lineno, rec in run.requests:
        rid = _rid(lineno, rec)
        if not (EPOCH_RANGE[0] <= rec.start <= EPOCH_RANGE[1]):
            out.append(Finding(rel, f"{rid} start", "a wall-clock time (seconds since 1970)", rec.start))
            continue
        if rec.end is None:
            if rec.ok:
                out.append(Finding(rel, f"{rid} end", "the end of a successful request", None))
            continue
        duration = rec.end - rec.start
        if duration < 0:
            out.append(Finding(rel, f"{rid} end", f">= start {rec.start}", rec.end))
            continue
        if rec.ttft is not None and not (0 <= rec.ttft <= duration + ORDER_SLACK_S):
            out.append(Finding(rel, f"{rid} ttft", f"0..{duration:.6f} (within end - start)", rec.ttft))
        if any(g < 0 for g in rec.itl):
            out.append(Finding(rel, f"{rid} itl", "gaps >= 0", min(rec.itl)))
        elif rec.ttft is not None and rec.ttft + sum(rec.itl) > duration + ORDER_SLACK_S + 1e-6 * len(rec.itl):
            out.append(
                Finding(
                    rel,
                    f"{rid} itl",
                    f"ttft + sum(itl) <= end - start = {duration:.6f}",
                    round(rec.ttft + sum(rec.itl), 6),
                )
            )
        if rec.ok and rec.phase == "measure" and rec.completion_tokens and rec.ttft is None:
            out.append(Finding(rel, f"{rid} ttft", "a time to first token (tokens were generated)", None))
        if rec.completion_tokens is not None and rec.completion_tokens < 0:
            out.append(Finding(rel, f"{rid} completion_tokens", ">= 0", rec.completion_tokens))
        if rec.prompt_tokens is not None and rec.prompt_tokens < 0:
            out.append(Finding(rel, f"{rid} prompt_tokens", ">= 0", rec.prompt_tokens))
        if rec.completion_tokens is not None and len(rec.itl) > max(rec.completion_tokens, 1):
            out.append(
                Finding(
                    rel,
                    f"{rid} itl",
                    f"at most completion_tokens = {rec.completion_tokens} gaps",
                    f"{len(rec.itl)} gaps",
                )
            )
    return out


def _iso_ts(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def check_windows(run: RunData, sweep: dict) -> list[Finding]:
    """Measured requests inside their level's window; levels inside the run's window, one after another; each
    level's requests and warmup as the sweep config implies."""
    out = []
    by_level: dict[tuple[str, int], list[tuple[int, RequestRecord]]] = {}
    for lineno, rec in run.requests:
        by_level.setdefault((rec.workload, rec.concurrency), []).append((lineno, rec))
    started = _iso_ts((run.run or {}).get("started"))
    finished = _iso_ts((run.run or {}).get("finished"))
    rel_lv = f"{run.rel}/levels.jsonl"
    if isinstance(run.run, dict) and run.run.get("started") is not None and started is None:
        out.append(Finding(f"{run.rel}/run.json", "started", "an ISO time", run.run.get("started")))
    if started is not None and finished is not None and finished < started:
        out.append(Finding(f"{run.rel}/run.json", "finished", f">= started {run.run['started']}", run.run["finished"]))
    previous_end = None
    for lineno, lv in sorted(run.levels, key=lambda item: item[1].start):
        lid = _rid(lineno, lv)
        if not (_finite(lv.start) and _finite(lv.end) and EPOCH_RANGE[0] <= lv.start <= lv.end <= EPOCH_RANGE[1]):
            out.append(Finding(rel_lv, f"{lid} end", f"a wall-clock time >= start {lv.start}", lv.end))
            continue
        if started is not None and lv.start < started - WINDOW_SLACK_S:
            out.append(Finding(rel_lv, f"{lid} start", f">= run.json started {run.run['started']}", lv.start))
        if finished is not None and lv.end > finished + WINDOW_SLACK_S:
            out.append(Finding(rel_lv, f"{lid} end", f"<= run.json finished {run.run['finished']}", lv.end))
        if previous_end is not None and lv.start < previous_end - ORDER_SLACK_S:
            out.append(Finding(rel_lv, f"{lid} start", f">= the previous level's end {previous_end}", lv.start))
        previous_end = lv.end
        # With a time floor (sweep.min_level_seconds / warmup_seconds) a level sends more than its count until the
        # floor is reached: the count is then a minimum, not the exact number.
        want = requests_for(lv.concurrency, sweep)
        if lv.requests < want or (lv.requests != want and not float(sweep.get("min_level_seconds") or 0)):
            out.append(Finding(rel_lv, f"{lid} requests", f"{want} (the config's sweep)", lv.requests))
        want_warm = sweep.get("warmup_requests", lv.warmup)
        if lv.warmup < want_warm or (lv.warmup != want_warm and not float(sweep.get("warmup_seconds") or 0)):
            out.append(Finding(rel_lv, f"{lid} warmup", want_warm, lv.warmup))
        for rlineno, rec in by_level.get((lv.workload, lv.concurrency), []):
            if rec.phase != "measure":
                continue
            end = rec.end if rec.end is not None else rec.start
            if rec.start < lv.start - 1e-6 or end > lv.end + 1e-6:
                out.append(
                    Finding(
                        f"{run.rel}/records.jsonl",
                        f"{_rid(rlineno, rec)} start..end",
                        f"inside the level window {lv.start}..{lv.end}",
                        f"{rec.start}..{end}",
                    )
                )
    return out


def check_gpu_identity(runs: list[RunData], manifest: dict) -> list[Finding]:
    out = []
    gpu_type = manifest.get("gpu_type")
    names = {}
    for run in runs:
        host = (run.run or {}).get("host") or {}
        rel = f"{run.rel}/run.json"
        if run.status == "ok" and host.get("gpu_type") is not None and host.get("gpu_type") != gpu_type:
            out.append(Finding(rel, "host.gpu_type", f"{gpu_type} (manifest)", host.get("gpu_type")))
        gpus = host.get("gpus") or []
        if gpus:
            first = gpus[0]
            names[run.rel] = first.get("name")
            try:
                key = gputype.gpu_type_key(
                    first.get("name") or "", first.get("compute_cap") or "", int(first.get("memory_mib") or 0)
                )
            except AttnbenchError as exc:
                out.append(Finding(rel, "host.gpus[0].compute_cap", "a compute capability such as 9.0", str(exc)))
            else:
                if host.get("gpu_type") != key:
                    out.append(
                        Finding(
                            rel,
                            "host.gpu_type",
                            f"{key} (from host.gpus[0] name, compute_cap, memory)",
                            host.get("gpu_type"),
                        )
                    )
        sample_id = ((run.run or {}).get("gpu") or {}).get("gpu")
        for lineno, sample in run.gpu_samples:
            if sample_id is not None and sample.get("gpu") != sample_id:
                out.append(
                    Finding(
                        f"{run.rel}/gpu.jsonl",
                        f"line {lineno} gpu",
                        f"{sample_id} (run.json gpu.gpu)",
                        sample.get("gpu"),
                    )
                )
                break
    manifest_name = (manifest.get("host") or {}).get("gpu_name")
    for rel, name in names.items():
        if name != manifest_name:
            out.append(
                Finding(f"{rel}/run.json", "host.gpus[0].name", f"{manifest_name} (manifest host.gpu_name)", name)
            )
    return out


# --- physics ------------------------------------------------------------------------------------------------------


def load_bandwidths() -> dict[str, float]:
    return {str(k): float(v) for k, v in yaml.safe_load(BANDWIDTH_FILE.read_text(encoding="utf-8")).items()}


def _architecture(cfg: dict, search: list[Path]) -> dict | None:
    """The model's HF config.json as the config names it (config/models/<x>.json), looked up in the folders a
    verifier has: the current directory and the source checkout this package runs from."""
    arch = (cfg.get("model") or {}).get("architecture")
    if not isinstance(arch, str) or not arch.endswith(".json") or ".." in Path(arch).parts or Path(arch).is_absolute():
        return None
    # An installed package carries config/models/*.json as package data in attnbench/models/.
    for path in [base / arch for base in search] + [PACKAGE_DIR / "models" / Path(arch).name]:
        if path.is_file():
            try:
                return safejson.load_file(path, str(path))
            except UnsafeInputError:
                return None
    return None


def weights_read_per_step(cfg: dict, search: list[Path]) -> tuple[float, str] | None:
    """Lower bound of the bytes one decode step reads: every weight except the embedding table (of which a step
    reads one row per sequence), from the model's architecture; else the config's analysis.weights_gb."""
    arch = _architecture(cfg, search)
    model = cfg.get("model") or {}
    if isinstance(arch, dict):
        try:
            total = compat.estimate_weight_bytes(arch, model.get("dtype") or "auto", model.get("quantization"))
            dtype = arch.get("torch_dtype", "float16") if (model.get("dtype") or "auto") == "auto" else model["dtype"]
            embedding = arch["vocab_size"] * arch["hidden_size"] * compat.DTYPE_BYTES.get(str(dtype), 2)
            return float(total - embedding), f"weights of {model.get('architecture')} less the embedding table"
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            pass
    gb = (cfg.get("analysis") or {}).get("weights_gb")
    if isinstance(gb, (int, float)) and not isinstance(gb, bool) and gb > 0:
        return float(gb) * 1e9, "analysis.weights_gb"
    return None


def check_decode_physics(runs: list[RunData], manifest: dict, search: list[Path]) -> tuple[list[Finding], str | None]:
    """Findings for requests whose time per output token beats the memory-bandwidth bound, and a note saying
    which bound applied (None when the bundle does not name a known GPU and model)."""
    cfg = manifest["config"]
    if (cfg.get("engine") or {}).get("device") != "cuda":
        return [], None
    name = (manifest.get("host") or {}).get("gpu_name")
    bandwidth = load_bandwidths().get(gputype.slugify(name)) if isinstance(name, str) else None
    weights = weights_read_per_step(cfg, search)
    if bandwidth is None or weights is None:
        return [], None
    bound_s = weights[0] / (bandwidth * 1e12)
    note = (
        f"decode bound {bound_s * 1e3:.3f} ms per token ({weights[1]}: {weights[0] / 1e9:.2f} GB; "
        f"{name}: {bandwidth} TB/s peak)"
    )
    out = []
    for run in runs:
        for lineno, rec in run.requests:
            if not (
                rec.ok
                and rec.phase == "measure"
                and rec.ttft is not None
                and rec.end is not None
                and (rec.completion_tokens or 0) > 1
            ):
                continue
            tpot = (rec.end - rec.start - rec.ttft) / (rec.completion_tokens - 1)
            if tpot < bound_s:
                out.append(
                    Finding(
                        f"{run.rel}/records.jsonl",
                        f"{_rid(lineno, rec)} end",
                        f"time per output token >= {bound_s * 1e3:.3f} ms (memory-bandwidth bound)",
                        f"{tpot * 1e3:.3f} ms",
                    )
                )
    return out, note


def check_runs(runs: list[RunData], manifest: dict, search: list[Path]) -> tuple[list[Finding], list[str]]:
    """Every plausibility check over the typed runs; (findings, notes)."""
    cfg = manifest["config"]
    sweep = cfg.get("sweep") or {}
    out: list[Finding] = []
    for run in runs:
        out += check_identity(run, manifest["experiment"])
        out += check_request_times(run)
        if run.status == "ok":
            out += check_windows(run, sweep)
    out += check_gpu_identity(runs, manifest)
    physics, note = check_decode_physics(runs, manifest, search)
    return out + physics, [note] if note else []


def bundle_name_matches(archive_name: str, expected: str) -> tuple[list[Finding], list[str]]:
    """The archive's file name is derived from the manifest (GPU type, date of the last run): a bundle-* name
    that differs claims another GPU or day (a finding); any other name is a local copy's name (a note)."""
    if archive_name == expected:
        return [], []
    if archive_name.startswith("bundle-"):
        return [
            Finding(archive_name, "file name", f"{expected} (from manifest gpu_type and finished)", archive_name)
        ], []
    return [], [f"file name {archive_name} is not the bundle's own name {expected}"]
