"""The client's own lag: evidence, stored with every level, that the load generator kept up with what it measured.

A client that cannot keep up inflates TTFT and, in open loop, sends late; nothing in the request timings alone
tells that apart from a slow server. Three signals, each kept in the level's raw record (levels.jsonl "client"):

- event-loop lag: a timer asks to wake every `interval_s`; how late it actually wakes is the time any ready
  callback (a chunk to parse, a request to send) waited behind others. p50/p99/max over the level's measured window.
- the client's CPU use: process CPU seconds (all threads; plus its worker processes', multiproc.py) over wall seconds,
  in percent of one core; near 100 the event loop is saturated whatever the lag says.
- send lag (open loop only): actual send time minus scheduled send time, computed from the request records'
  `scheduled` and `start` fields (metrics.py), so it is recomputable from raw files.

A level whose event-loop lag p99 or send lag p99 exceeds `limit_ms` is flagged (`client_lagged`); the limit is
stored with the level so the flag can be recomputed from the raw files alone.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_INTERVAL_S = 0.01  # 100 wake-ups a second: negligible work, fine enough to see a 10 ms stall
DEFAULT_LIMIT_MS = 10.0  # p99 beyond this flags the level: the order of a decode step on a fast GPU


@dataclass
class ClientLoad:
    """What levels.jsonl stores under "client" (as a dict): the monitor's summary of one level."""

    loop_lag_ms_p50: float | None
    loop_lag_ms_p99: float | None
    loop_lag_ms_max: float | None
    loop_samples: int
    interval_ms: float
    cpu_s: float  # process (and children) user+system CPU seconds over the window
    wall_s: float
    cpu_pct: float | None  # cpu_s / wall_s * 100 (percent of one core)
    limit_ms: float
    processes: int = 1


def _cpu_seconds() -> float:
    """User + system CPU of this process (every thread). Not RUSAGE_CHILDREN: the server may be our child, and
    worker processes report their own CPU time (merge_loads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def percentiles_ms(values_s: list[float]) -> tuple[float | None, float | None, float | None]:
    """(p50, p99, max) in ms of values in seconds, rounded to 1 us; Nones when there are none."""
    if not values_s:
        return None, None, None
    a = np.asarray(values_s, dtype=np.float64) * 1000.0
    return (round(float(np.percentile(a, 50)), 3), round(float(np.percentile(a, 99)), 3), round(float(a.max()), 3))


class LoopLagMonitor:
    """`mon = LoopLagMonitor(); mon.start()` inside a running loop, then `load = await mon.stop()`."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, limit_ms: float = DEFAULT_LIMIT_MS):
        if interval_s <= 0:
            raise ValueError(f"lag monitor interval must be positive, not {interval_s}")
        self.interval_s = interval_s
        self.limit_ms = limit_ms
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None
        self._t0 = self._cpu0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = _cpu_seconds()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.samples.append(max(0.0, time.perf_counter() - due))

    async def stop(self) -> ClientLoad:
        """Stop sampling and summarize."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        wall = time.perf_counter() - self._t0
        cpu = _cpu_seconds() - self._cpu0
        p50, p99, peak = percentiles_ms(self.samples)
        return ClientLoad(
            loop_lag_ms_p50=p50,
            loop_lag_ms_p99=p99,
            loop_lag_ms_max=peak,
            loop_samples=len(self.samples),
            interval_ms=self.interval_s * 1000,
            cpu_s=round(cpu, 4),
            wall_s=round(wall, 4),
            cpu_pct=round(cpu / wall * 100, 2) if wall > 0 else None,
            limit_ms=self.limit_ms,
        )


def merge_loads(parent: ClientLoad, workers: list[ClientLoad]) -> ClientLoad:
    """One level's client record from the parent's and its worker processes' (multiproc.py): the worst event loop's
    lag percentiles (a request waits on the loop of its own process), the CPU time of all processes."""
    if not workers:
        return parent
    loops = [w for w in workers if w.loop_samples] or [parent]
    cpu = parent.cpu_s + sum(w.cpu_s for w in workers)
    return ClientLoad(
        loop_lag_ms_p50=max(w.loop_lag_ms_p50 or 0.0 for w in loops),
        loop_lag_ms_p99=max(w.loop_lag_ms_p99 or 0.0 for w in loops),
        loop_lag_ms_max=max(w.loop_lag_ms_max or 0.0 for w in loops),
        loop_samples=sum(w.loop_samples for w in loops),
        interval_ms=parent.interval_ms,
        cpu_s=round(cpu, 4),
        wall_s=parent.wall_s,
        cpu_pct=round(cpu / parent.wall_s * 100, 2) if parent.wall_s > 0 else None,
        limit_ms=parent.limit_ms,
        processes=1 + len(workers),
    )


def as_record(load: ClientLoad) -> dict:
    return asdict(load)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def lag_columns(client: dict | None, send_lags_s: list[float]) -> dict:
    """The level-table columns of the client's lag (metrics.py): loop lag and send lag p50/p99/max in ms, CPU
    percent and the flag. Empty when the level carries no client record (runs made before it existed)."""
    if client is None:
        return {}
    s50, s99, smax = percentiles_ms(send_lags_s)
    limit = float(client.get("limit_ms", DEFAULT_LIMIT_MS))
    loop_p99 = client.get("loop_lag_ms_p99")
    lagged = (loop_p99 is not None and loop_p99 > limit) or (s99 is not None and s99 > limit)
    nan = float("nan")
    return {
        "client_loop_lag_ms_p50": _num(client.get("loop_lag_ms_p50")),
        "client_loop_lag_ms_p99": _num(loop_p99),
        "client_loop_lag_ms_max": _num(client.get("loop_lag_ms_max")),
        "client_send_lag_ms_p50": nan if s50 is None else s50,
        "client_send_lag_ms_p99": nan if s99 is None else s99,
        "client_send_lag_ms_max": nan if smax is None else smax,
        "client_cpu_pct": _num(client.get("cpu_pct")),
        "client_lagged": bool(lagged),
    }


LAG_COLUMNS = list(lag_columns({}, []))


def lag_reason(row: dict) -> str:
    """Why a level row is flagged, for tables: 'client lagged (loop p99 12.3 ms, send p99 - ms, limit ...)'."""

    def ms(v) -> str:
        return "-" if v != v else f"{v:.1f} ms"  # NaN != NaN

    return (
        f"client lagged (event-loop p99 {ms(row['client_loop_lag_ms_p99'])}, send p99 "
        f"{ms(row['client_send_lag_ms_p99'])}, CPU {row['client_cpu_pct']:.0f}%)"
    )


def lag_note(load: ClientLoad) -> str:
    """', CLIENT LAGGED (...)' for a progress line when the event loop's p99 lag passed the limit, else ''."""
    if load.loop_lag_ms_p99 is None or load.loop_lag_ms_p99 <= load.limit_ms:
        return ""
    return (
        f", CLIENT LAGGED (event-loop p99 {load.loop_lag_ms_p99:.1f} ms > {load.limit_ms:g} ms, "
        f"CPU {load.cpu_pct or 0:.0f}%)"
    )
