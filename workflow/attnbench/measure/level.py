"""One load level's bookkeeping, shared by the closed loop (sweep.py), the open loop (openloop.py) and the client
process pool (multiproc.py): a level's prompts and record ids, the closed loop itself, the failure records of the
requests a level never sent, and the clients and files that every level of one run appends to (LoadRun).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from attnbench.config.experiment import SweepSettings, Workload
from attnbench.errors import SweepError
from attnbench.measure.client import Client, Sampling
from attnbench.measure.records import JsonlAppender, LevelRecord, RequestRecord
from attnbench.measure.workload import PromptBuilder

UNREACHABLE = "cannot connect"  # prefix of the client's error when nothing listens: the server is gone
NOT_SENT = "not sent"  # prefix of the error of a request a level never sent (it aborted first)


@dataclass
class SweepSummary:
    levels: list[LevelRecord] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)  # every record written (warmup and probe too)
    n_ok: int = 0  # measured requests
    n_failed: int = 0
    first_error: str | None = None

    def failures(self, kept_in: str | Path) -> SweepError | None:
        """The error that names failed measured requests (None when none failed)."""
        if not self.n_failed:
            return None
        return SweepError(
            f"{self.n_failed} of {self.n_ok + self.n_failed} measured requests failed "
            f"(first: {self.first_error}); records kept in {kept_in}"
        )

    def count(self, level: LevelRecord, measured: list[RequestRecord]) -> None:
        """A finished level and its measured records (already in `records`) into the totals."""
        self.levels.append(level)
        self.n_ok += sum(r.ok for r in measured)
        self.n_failed += level.failed
        if self.first_error is None:
            self.first_error = next((r.error for r in measured if not r.ok), None)


class Level:
    """Shared state of one level: its prompts, the next one to send, its records and why it aborted."""

    def __init__(self, ids: dict, prompts: list[tuple[str, int]], phase: str, concurrency: int):
        self.ids = ids
        self.prompts = prompts
        self.phase = phase
        self.concurrency = concurrency
        self.next = 0
        self.records: list[RequestRecord] = []
        self.abort: str | None = None
        # Time floor (set_floor): once its prompts are all sent, the level keeps sending new ones until min_end.
        self.floor_s = 0.0
        self.min_end: float | None = None
        self.more_prompt: Callable[[int], Awaitable[tuple[str, int]]] | None = None

    def set_floor(self, seconds: float, more_prompt: Callable[[int], Awaitable[tuple[str, int]]]) -> None:
        """Measure at least `seconds` from the first send, building further prompts with more_prompt(index) when
        the prepared ones run out."""
        if seconds > 0:
            self.floor_s, self.more_prompt = seconds, more_prompt

    async def wants_more(self) -> bool:
        """Another request to send: a prepared prompt is left, or the time floor is not reached (then one more
        prompt is built and appended). The floor counts from the first call, made just before the first send, so
        the level's window (first start to last end) is at least floor_s long, to within the microseconds between
        these checks and the client's own time stamps."""
        if self.min_end is None and self.floor_s:
            self.min_end = time.time() + self.floor_s
        if self.next < len(self.prompts):
            return True
        if self.more_prompt is None or self.min_end is None or time.time() >= self.min_end:
            return False
        self.prompts.append(await self.more_prompt(len(self.prompts)))
        return True

    def record_ids(self, index: int) -> dict:
        tag = {"measure": "", "warmup": "w", "probe": "p"}[self.phase]
        i = self.ids
        return {
            "experiment": i["experiment"],
            "arm": i["arm"],
            "repeat": i["repeat"],
            "workload": i["workload"],
            "concurrency": self.concurrency,
            "phase": self.phase,
            "index": index,
            "request_id": (
                f"{i['experiment']}-{i['arm']}-r{i['repeat']}-{i['workload']}-c{self.concurrency}-{tag}{index}"
            ),
            "prompt_seed": self.prompts[index][1],
        }

    def lost_server(self, record: RequestRecord, abort_check: Callable[[], str | None] | None) -> None:
        """After a finished request: a failure to connect aborts the level (abort_check's reason first)."""
        if not record.ok and (record.error or "").startswith(UNREACHABLE):
            reason = abort_check() if abort_check else None
            self.abort = self.abort or reason or f"server unreachable ({record.error})"

    def record_unsent(self, writer: JsonlAppender, extra: Callable[[int], dict[str, Any]] = lambda _i: {}) -> None:
        """After an abort: the requests never sent are failures too, with the cause (extra(index): more fields)."""
        if not self.abort:
            return
        now = time.time()
        for index in range(self.next, len(self.prompts)):
            record = RequestRecord(
                **self.record_ids(index),
                start=now,
                end=now,
                ok=False,
                error=f"{NOT_SENT}: {self.abort}",
                **extra(index),
            )
            writer.append(record)
            self.records.append(record)
        self.next = len(self.prompts)


def sent_window(records: list[RequestRecord]) -> list[RequestRecord]:
    """The records whose requests were sent (all of them when none was): a level's start and end come from these."""
    return [r for r in records if not (r.error or "").startswith(NOT_SENT)] or records


async def closed_loop(
    client: Client,
    level: Level,
    sampling: Sampling,
    writer: JsonlAppender,
    abort_check: Callable[[], str | None] | None,
    progress: Callable[[], None],
) -> None:
    """Keep `level.concurrency` requests in flight until every prompt was sent (or the level aborts)."""

    async def worker() -> None:
        while level.abort is None and await level.wants_more():
            reason = abort_check() if abort_check else None
            if reason:
                level.abort = reason
                return
            index = level.next
            level.next += 1
            record = await client.request(level.prompts[index][0], sampling, level.record_ids(index))
            writer.append(record)
            level.records.append(record)
            progress()
            level.lost_server(record, abort_check)

    await asyncio.gather(*(worker() for _ in range(min(level.concurrency, len(level.prompts)))))
    level.record_unsent(writer)


def sampling_for(settings: SweepSettings, workload: Workload, max_tokens: int | None = None) -> Sampling:
    """The sampling parameters of a workload's requests (max_tokens: instead of the workload's output tokens)."""
    return Sampling(
        max_tokens=max_tokens or workload.output_tokens,
        ignore_eos=bool(settings.ignore_eos),
        temperature=float(settings.temperature),
        system_prompt=settings.system_prompt,
    )


class LoadRun:
    """The clients and files of one run of levels (`async with`): the streaming Client, a separate small client
    for /tokenize and the latency GETs (so they never queue behind streaming requests), the prompt builder, and
    the request and level record files, closed in that reverse order on the way out; and the summary of its levels."""

    def __init__(
        self,
        base_url: str,
        model: str,
        settings: SweepSettings,
        out_dir: Path,
        files: tuple[str, str],
        *,
        pool_size: int,
        api_key: str | None,
        abort_check: Callable[[], str | None] | None = None,
        on_level: Callable[[str, dict], None] | None = None,
    ):
        self.base_url, self.settings = base_url, settings
        self.abort_check, self.on_level = abort_check, on_level  # the caller's hooks (see run_sweep)
        self.summary = SweepSummary()
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = Client(
            base_url,
            model,
            api=settings.api,
            concurrency=pool_size,
            timeout_s=float(settings.request_timeout_s),
            api_key=api_key,
        )
        self.aux = httpx.AsyncClient(headers=self.headers)
        self.records = JsonlAppender(Path(out_dir) / files[0])
        self.levels = JsonlAppender(Path(out_dir) / files[1])
        self.builder = PromptBuilder(
            self.aux, base_url, model, api=settings.api, system_prompt=settings.system_prompt, headers=self.headers
        )

    async def __aenter__(self) -> LoadRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.records.close()
        self.levels.close()
        await self.aux.aclose()
        await self.client.aclose()

    def mark(self, event: str, ids: dict) -> None:
        """The on_level hook ("start" / "end" of a level's measured requests), when the caller gave one."""
        if self.on_level:
            self.on_level(event, ids)

    def finish_level(self, level: LevelRecord, measured: list[RequestRecord]) -> None:
        """A finished level's line on disk (synced at once) and in the summary."""
        self.levels.append(level)
        self.levels.sync()
        self.summary.count(level, measured)
