"""A closed loop spread over several client processes, with one merged record stream.

One Python process parses every SSE chunk of every stream on one core; at a few hundred streams that core, not the
server, can become the limit (lag.py shows when). With `sweep.client_processes: P > 1` a level's N in-flight
requests are split over P worker processes (N // P each, the remainder to the first ones), each with its own event
loop, Client and connections, kept for the whole sweep. A level's prompts are dealt round-robin to the workers
that hold requests; each worker runs the sweep's own closed loop (level.py) over its share.

Records travel back over a pipe as each request finishes, and the parent appends them to the one records.jsonl
(a crash loses at most the records in the pipe). Each worker measures its own event-loop lag and CPU time; the
level's client record merges them (lag.merge_loads): the worst worker's lag percentiles, the CPU of all processes.
Workers are started with `spawn` (a fork of a process with a running event loop and open sockets is unsafe) and
stopped when the pool closes, also on errors.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection

from attnbench.errors import SweepError
from attnbench.measure.client import Client, Sampling
from attnbench.measure.lag import ClientLoad, LoopLagMonitor
from attnbench.measure.level import UNREACHABLE, Level, closed_loop
from attnbench.measure.records import RequestRecord


class _Share(Level):
    """A worker's part of a level: a Level over the record ids the parent computed, so the worker runs
    level.closed_loop unchanged. A share has no time floor (sweep.min_level_seconds applies to single-process
    levels; a pooled level is sized by its request count)."""

    def __init__(self, prompts: list[tuple[str, int]], ids: list[dict], concurrency: int, phase: str):
        super().__init__({}, prompts, phase, concurrency)
        self._ids = ids

    def record_ids(self, index: int) -> dict:
        return self._ids[index]


class _PipeWriter:
    """level.closed_loop's writer: sends each finished record to the parent at once."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def append(self, record: RequestRecord) -> None:
        self.conn.send(("record", asdict(record)))


def _worker(conn: Connection, client_args: dict) -> None:
    asyncio.run(_worker_loop(conn, client_args))


async def _worker_loop(conn: Connection, client_args: dict) -> None:
    loop = asyncio.get_running_loop()
    async with Client(**client_args) as client:
        while True:
            message = await loop.run_in_executor(None, conn.recv)  # the loop stays free while waiting for work
            if message is None:
                return
            share = _Share(message["prompts"], message["ids"], message["concurrency"], "measure")
            monitor = LoopLagMonitor(limit_ms=message["lag_limit_ms"])
            monitor.start()
            await closed_loop(client, share, Sampling(**message["sampling"]), _PipeWriter(conn), None, lambda: None)
            load = await monitor.stop()
            conn.send(("done", asdict(load)))


class ClientPool:
    """`async with ClientPool(P, base_url=..., model=..., ...) as pool: loads = await pool.closed_loop(...)`."""

    def __init__(self, processes: int, **client_args):
        if processes < 2:
            raise SweepError(f"sweep.client_processes must be >= 2 for a process pool, not {processes}")
        self.processes = processes
        self.client_args = client_args
        self._workers: list[tuple[multiprocessing.Process, Connection]] = []

    async def __aenter__(self) -> ClientPool:
        ctx = multiprocessing.get_context("spawn")
        for k in range(self.processes):
            parent, child = ctx.Pipe()
            args = {**self.client_args, "concurrency": self.client_args.get("concurrency", 1)}
            proc = ctx.Process(target=_worker, args=(child, args), name=f"attnbench-client-{k}", daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent))
        return self

    async def __aexit__(self, *exc) -> None:
        for _proc, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn in self._workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()

    async def run(
        self,
        level,
        sampling: Sampling,
        writer,
        abort_check: Callable[[], str | None] | None,
        progress: Callable[[], None],
        lag_limit_ms: float,
    ) -> list[ClientLoad]:
        """level.closed_loop's job for `level` (a level.Level), over the workers: each finished record is appended
        to writer and level.records at once. Returns the workers' lag records."""

        def on_record(record: RequestRecord) -> None:
            writer.append(record)
            level.records.append(record)
            progress()

        loads = await self._closed_loop(level, sampling, on_record, lag_limit_ms)
        level.next = len(level.prompts)
        lost = next((r.error for r in level.records if (r.error or "").startswith(UNREACHABLE)), None)
        if lost:
            level.abort = (abort_check() if abort_check else None) or f"server unreachable ({lost})"
        return loads

    async def _closed_loop(
        self, level, sampling: Sampling, on_record: Callable[[RequestRecord], None], lag_limit_ms: float
    ) -> list[ClientLoad]:
        n, conc = len(level.prompts), level.concurrency
        shares = [conc // self.processes + (k < conc % self.processes) for k in range(self.processes)]
        active = [k for k in range(self.processes) if shares[k] > 0]
        loop = asyncio.get_running_loop()
        done: dict[int, asyncio.Future] = {}
        for slot, k in enumerate(active):
            indices = list(range(slot, n, len(active)))
            if not indices:
                continue
            _, conn = self._workers[k]
            done[k] = loop.create_future()
            conn.send(
                {
                    "prompts": [level.prompts[i] for i in indices],
                    "ids": [level.record_ids(i) for i in indices],
                    "concurrency": shares[k],
                    "sampling": asdict(sampling),
                    "lag_limit_ms": lag_limit_ms,
                }
            )
            loop.add_reader(conn.fileno(), self._on_readable, conn, done[k], on_record)
        try:
            return [ClientLoad(**(await fut)) for fut in done.values()]
        finally:
            for k in done:
                loop.remove_reader(self._workers[k][1].fileno())

    def _on_readable(self, conn: Connection, fut: asyncio.Future, on_record: Callable[[RequestRecord], None]) -> None:
        try:
            while conn.poll():
                kind, payload = conn.recv()
                if kind == "record":
                    on_record(RequestRecord(**payload))
                elif not fut.done():
                    fut.set_result(payload)
        except (EOFError, OSError) as exc:  # the worker died: say so instead of waiting forever
            if not fut.done():
                fut.set_exception(SweepError(f"a client worker process exited mid-level ({type(exc).__name__})"))
