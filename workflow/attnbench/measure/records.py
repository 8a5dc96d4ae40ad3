"""Raw measurement records: one JSON line per request and per finished level.

These files are written first and appended as data arrives; every derived number is computed from them
(docs/DESIGN.md fixes the fields). Keeping them flat JSON lines means a crash loses at most the line in flight.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class RequestRecord:
    experiment: str
    arm: str
    repeat: int
    workload: str
    concurrency: int
    phase: str  # "measure" | "warmup" | "probe"
    index: int
    request_id: str
    start: float  # wall clock (time.time()) when the request was sent
    end: float | None = None  # wall clock when the stream ended (or failed)
    ttft: float | None = None  # seconds to the first content token
    itl: list[float] = field(default_factory=list)  # seconds between content chunks
    prompt_tokens: int | None = None  # from the server's usage
    completion_tokens: int | None = None
    http_status: int | None = None
    ok: bool = False
    error: str | None = None
    prompt_seed: int | None = None
    # open loop only (openloop.py): wall time the arrival process scheduled the send for; start - scheduled is
    # the client's send lag. None in closed loop, where a request is sent when a slot frees.
    scheduled: float | None = None
    rate: float | None = None  # open loop only: the level's target rate (requests/s), its key beside the workload
    schema: int = SCHEMA_VERSION
    type: str = "request"


@dataclass
class LevelRecord:
    experiment: str
    arm: str
    repeat: int
    workload: str
    concurrency: int
    requests: int  # measured requests asked for (warmup excluded)
    warmup: int
    start: float  # wall window of the measured requests
    end: float
    latency_ms: list[float] = field(default_factory=list)  # llmapibenchmark-style GET round trips
    failed: int = 0
    complete: bool = True
    client: dict | None = None  # the client's own lag and CPU use over the level (lag.ClientLoad as a dict)
    # open loop only (openloop.py): target rate (requests/s); arrival process, its seed and origin (wall time of
    # schedule offset 0), in-flight cap and goodput limits, so achieved rate and goodput recompute from this file
    rate: float | None = None
    open_loop: dict | None = None
    schema: int = SCHEMA_VERSION
    type: str = "level"


def to_json(record: Any) -> str:
    return json.dumps(asdict(record), separators=(",", ":"), sort_keys=True)


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append one record and flush it to disk now, so a crash keeps everything already measured."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(to_json(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class RecordError(ValueError):
    """A raw file holds a line that is not a valid record; the message names file and line."""


def _from_dict(cls: type, data: dict, where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {sorted(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise RecordError(f"{where}: {exc}") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: not JSON ({exc.msg})") from None


def read_requests(path: str | os.PathLike) -> list[RequestRecord]:
    return [_from_dict(RequestRecord, d, f"{path}:{n}") for n, d in iter_jsonl(path)]


def read_levels(path: str | os.PathLike) -> list[LevelRecord]:
    return [_from_dict(LevelRecord, d, f"{path}:{n}") for n, d in iter_jsonl(path)]


class JsonlAppender:
    """An open JSONL file for a stream of records: each line is written and flushed to the OS at once (a crash of
    this process loses nothing), while the fsync that also survives a machine crash is deferred to `sync()` /
    `close()`, because an fsync per request would stall an event loop that is timing hundreds of streams."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def append(self, record: Any) -> None:
        self._fh.write(to_json(record) + "\n")
        self._fh.flush()

    def sync(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
