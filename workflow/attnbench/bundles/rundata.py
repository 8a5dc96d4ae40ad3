"""The run folders of a received bundle as typed records, read safely: every record field must have its dataclass
type (a string where a number belongs is a finding, not a crash), run.json and kernels.json the shapes the checks
read. verify.py and plausibility.py compute with these values only after this loading found nothing wrong."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from attnbench import safejson
from attnbench.bundles.finding import Finding
from attnbench.measure.records import LevelRecord, RequestRecord


@dataclass
class RunData:
    """One run folder of a bundle as typed records (files absent -> empty)."""

    rel: str  # runs/<arm>/rep<k>
    arm: str
    repeat: int
    status: str | None
    run: dict | None
    requests: list[tuple[int, RequestRecord]] = field(default_factory=list)  # (line, record)
    levels: list[tuple[int, LevelRecord]] = field(default_factory=list)
    gpu_samples: list[tuple[int, dict]] = field(default_factory=list)


_NUMBER_TYPES = (int, float)  # exact types: json gives no subclasses, and bool must not pass for a number


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list and args[0] is float:  # itl: hundreds of numbers per record
        return isinstance(value, list) and all(type(v) in _NUMBER_TYPES for v in value)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _hint_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))


def typed_record(cls: type, data: Any, rel: str, lineno: int) -> tuple[Any, list[Finding]]:
    """A record dataclass from one parsed JSONL line, or the findings that say which field is wrong."""
    where = f"line {lineno}"
    if not isinstance(data, dict):
        return None, [Finding(rel, where, "a JSON object", type(data).__name__)]
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    out = [Finding(rel, f"{where} {k}", "no such field", "present") for k in sorted(set(data) - known, key=str)]
    for f in fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                out.append(Finding(rel, f"{where} {f.name}", "present", "(absent)"))
            continue
        if not _type_ok(data[f.name], hints[f.name]):
            out.append(Finding(rel, f"{where} {f.name}", _hint_name(hints[f.name]), data[f.name]))
    return (None, out) if out else (cls(**data), [])


# What verify reads from run.json, with the types it needs (None allowed where the pipeline writes null).
_RUN_SHAPE: dict[str, tuple[type, ...]] = {
    "": (dict,),
    "status": (str,),
    "error": (str, type(None)),
    "started": (str, type(None)),
    "finished": (str, type(None)),
    "experiment": (str,),
    "arm": (str,),
    "repeat": (int,),
    "backend": (dict, type(None)),
    "backend.requested": (str, type(None)),
    "backend.logged": (str, type(None)),
    "backend.match": (bool, type(None)),
    "engine": (dict, type(None)),
    "engine.versions": (dict, type(None)),
    "host": (dict, type(None)),
    "host.gpu_type": (str, type(None)),
    "host.gpus": (list, type(None)),
    "host.gpus[]": (dict,),
    "host.gpus[].name": (str, type(None)),
    "host.gpus[].memory_mib": (int, type(None)),
    "host.gpus[].compute_cap": (str, type(None)),
    "kernels": (dict, type(None)),
    "kernels.families": (dict, type(None)),
    "gpu": (dict, type(None)),
    "gpu.gpu": (str, type(None)),
    "slurm_job_id": (str, int, type(None)),
}
_KERNELS_SHAPE: dict[str, tuple[type, ...]] = {
    "": (dict,),
    "families": (dict, type(None)),
    "families{}": (dict,),
    "families{}.count": (int,),
    "families{}.share": (int, float),
    "families{}.kernels": (list,),
    "families{}.kernels[]": (dict,),
    "families{}.kernels[].name": (str,),
    "families_seen": (list, type(None)),
    "families_seen[]": (str,),
    "time_basis": (str, type(None)),
}


def check_shape(value: Any, shape: dict[str, tuple[type, ...]], rel: str) -> list[Finding]:
    """Type findings for the dotted paths of `shape` that exist in value ([] walks a list's items, {} a mapping's
    values)."""
    out: list[Finding] = []

    def walk(node: Any, path: str) -> None:
        allowed = shape.get(path)
        if allowed is not None:
            bad = not isinstance(node, allowed) or (isinstance(node, bool) and bool not in allowed)
            if bad:
                out.append(
                    Finding(rel, path or "(top level)", "/".join(t.__name__ for t in allowed), type(node).__name__)
                )
                return
        if isinstance(node, dict) and f"{path}{{}}" in shape:  # "x{}": every value of the mapping x
            for sub in node.values():
                walk(sub, f"{path}{{}}")
        elif isinstance(node, dict):
            for key, sub in node.items():
                child = f"{path}.{key}" if path else str(key)
                if child in shape or any(p.startswith((child + ".", child + "[", child + "{")) for p in shape):
                    walk(sub, child)
        elif isinstance(node, list) and f"{path}[]" in shape:
            for item in node:
                walk(item, f"{path}[]")

    walk(value, "")
    return out


def _load_records(path: Path, rel: str, cls: type) -> tuple[list[tuple[int, Any]], list[Finding]]:
    records, out = [], []
    for lineno, data in safejson.iter_jsonl(path, rel):
        record, problems = typed_record(cls, data, rel, lineno)
        out += problems
        if record is not None:
            records.append((lineno, record))
    return records, out


def load_run(root: Path, rel: str, arm: str, repeat: int, status: str | None) -> tuple[RunData, list[Finding]]:
    """Read one run folder. Raises safejson.UnsafeInputError for unreadable JSON (unsafe: the caller stops)."""
    rdir = root / rel
    data = RunData(rel, arm, repeat, status, None)
    out: list[Finding] = []
    if (rdir / "run.json").is_file():
        data.run = safejson.load_file(rdir / "run.json", f"{rel}/run.json")
        out += check_shape(data.run, _RUN_SHAPE, f"{rel}/run.json")
    if (rdir / "kernels.json").is_file():
        out += check_shape(
            safejson.load_file(rdir / "kernels.json", f"{rel}/kernels.json"), _KERNELS_SHAPE, f"{rel}/kernels.json"
        )
    if (rdir / "records.jsonl").is_file():
        data.requests, problems = _load_records(rdir / "records.jsonl", f"{rel}/records.jsonl", RequestRecord)
        out += problems
    if (rdir / "levels.jsonl").is_file():
        data.levels, problems = _load_records(rdir / "levels.jsonl", f"{rel}/levels.jsonl", LevelRecord)
        out += problems
    if (rdir / "gpu.jsonl").is_file():
        for lineno, sample in safejson.iter_jsonl(rdir / "gpu.jsonl", f"{rel}/gpu.jsonl"):
            if not isinstance(sample, dict):
                out.append(Finding(f"{rel}/gpu.jsonl", f"line {lineno}", "a JSON object", type(sample).__name__))
            else:
                data.gpu_samples.append((lineno, sample))
    return data, out


def runs_of(manifest: dict) -> list[tuple[str, str, int, str | None]]:
    """(path, arm, repeat, status) of every run the manifest lists (its shape checked by the bundle schema)."""
    return [(r["path"], a["name"], r["repeat"], r.get("status")) for a in manifest["arms"] for r in a["runs"]]
