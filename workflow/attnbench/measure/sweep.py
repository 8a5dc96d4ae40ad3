"""The closed-loop concurrency sweep: for each workload and level N, keep N requests in flight until the level's
request count is done and at least `min_level_seconds` have passed since its first measured request, after warm-up
requests that are recorded (phase=warmup) but excluded from metrics; the warm-up, too, runs its count and at least
`warmup_seconds`. A level sized by count alone lasts under a second on a fast server, which measures noise.

Raw records first: each request's record is appended to records.jsonl the moment it finishes, each finished level
to levels.jsonl; numbers are derived later from these files only (metrics.py). A level that cannot finish (the
server died) still gets its records: requests that were never sent are recorded as failed with the cause, the
level line says complete=false, and SweepError names the cause after everything is on disk.

Before the measured requests of a level, the latency probe takes the "Latency" figure as llmapibenchmark does:
plain GETs to the server root, timed one after the other while the server is idle (the reply's status does not
matter, only the round trip).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from attnbench.config.experiment import SweepSettings, Workload
from attnbench.errors import SweepError
from attnbench.measure.client import Client
from attnbench.measure.lag import LoopLagMonitor, as_record, lag_note, merge_loads
from attnbench.measure.level import Level, LoadRun, SweepSummary, closed_loop, sampling_for, sent_window
from attnbench.measure.loadcli import (
    add_load_parser,
    cli_experiment,
    parse_concurrency,
    parse_workload,
    run_keeping_error,
    settings_from_cli,
    write_summary_json,
)
from attnbench.measure.multiproc import ClientPool
from attnbench.measure.progress import Progress
from attnbench.measure.records import JsonlAppender, LevelRecord, RequestRecord, iter_jsonl
from attnbench.measure.workload import PromptBuilder

__all__ = ["SweepSummary", "Workload", "requests_for", "run_sweep", "send_probe"]  # Workload: moved to config

PREBUILD_SHARE = 0.7  # of the requests the warm-up's pace predicts for the time floor; the rest is built on demand


def expected_requests(warm: list[RequestRecord], n: int, seconds: float) -> int:
    """How many prompts to build before a level with a time floor: PREBUILD_SHARE of what a closed loop of n
    finishes in `seconds` at the warm-up's pace (n / mean end-to-end time per second); 0 without a warm-up. Prompts
    beyond it are built when needed (one /tokenize call each); prebuilding keeps most of that out of the measured
    window, and building fewer than predicted keeps a level from overshooting its floor when the warm-up ran
    faster than the level does."""
    e2e = [r.end - r.start for r in warm if r.ok and r.end and r.end > r.start]
    if not e2e or seconds <= 0:
        return 0
    return int(n * seconds / (sum(e2e) / len(e2e)) * PREBUILD_SHARE)


def requests_for(n: int, settings: SweepSettings | Mapping[str, Any]) -> int:
    """Measured requests of a level of concurrency n, before any time floor."""
    s = SweepSettings.for_caller(settings)
    if s.requests_per_level:
        return int(s.requests_per_level)
    return max(int(s.waves_per_level) * n, int(s.min_requests_per_level))


async def latency_probe(http: httpx.AsyncClient, base_url: str, n: int) -> list[float]:
    """llmapibenchmark's "Latency": n plain GETs to the server root, one after the other, each in ms."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            await http.get(base_url.rstrip("/") + "/", timeout=10)
        except httpx.HTTPError as exc:
            raise SweepError(f"latency probe GET {base_url}/ failed: {type(exc).__name__} {exc}") from None
        out.append(round((time.perf_counter() - t0) * 1000, 3))
    return out


def _check_fresh(out_dir: Path) -> None:
    """A sweep starts a run folder: it may only find the records of a kernel probe sent just before it (run-arm
    profiles the server first, so a failed kernel expectation stops the run before the sweep's time is spent)."""
    for name in ("records.jsonl", "levels.jsonl"):
        path = out_dir / name
        if not path.exists() or path.stat().st_size == 0:
            continue
        if name == "records.jsonl" and all(d.get("phase") == "probe" for _, d in iter_jsonl(path)):
            continue
        raise SweepError(f"{path} already holds records; write each run to a fresh folder")


class _PromptSource:
    """The prompts of one workload's levels, built in order so that no two requests of a run share one."""

    def __init__(self, builder: PromptBuilder, workload: Workload, seed: int, start: int):
        self.builder, self.workload, self.seed, self.next = builder, workload, seed, start

    async def one(self, _level_index: int = 0) -> tuple[str, int]:
        index = self.next
        self.next += 1
        return await self.builder.prompt(self.workload.prompt_tokens, self.seed, self.workload.name, index)

    async def take(self, count: int) -> list[tuple[str, int]]:
        return [await self.one() for _ in range(count)]


async def run_sweep(
    base_url: str,
    model: str,
    workloads: list[Workload],
    settings: SweepSettings | Mapping[str, Any] | None,
    out_dir: Path,
    *,
    experiment: str,
    arm: str,
    repeat: int,
    api_key: str | None = None,
    abort_check: Callable[[], str | None] | None = None,
    fail_on_errors: bool = True,
    on_level: Callable[[str, dict], None] | None = None,
) -> SweepSummary:
    """Sweep every workload's concurrency levels against a running server; see the module docstring. `settings`:
    the experiment's (a mapping, e.g. a config's sweep section, is completed by SweepSettings.for_caller).
    on_level("start"|"end", level ids) is called around each level's measured requests (the /metrics scraper).

    Raises SweepError, after writing everything measured, when the sweep aborts (abort_check() gave a reason or
    the server became unreachable) and, with fail_on_errors, when any measured request failed."""
    s = SweepSettings.for_caller(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_fresh(out_dir)
    max_conc = max((max(w.concurrency) for w in workloads if w.concurrency), default=1)
    n_levels, done_levels = sum(len(w.concurrency) for w in workloads), 0
    processes = int(s.client_processes or 1)
    files = ("records.jsonl", "levels.jsonl")
    hooks = dict(api_key=api_key, abort_check=abort_check, on_level=on_level)
    async with LoadRun(base_url, model, s, out_dir, files, pool_size=max_conc, **hooks) as run:
        pool_args = dict(base_url=base_url, model=model, api=s.api, concurrency=max_conc, api_key=api_key)
        pool = ClientPool(processes, **pool_args, timeout_s=float(s.request_timeout_s)) if processes > 1 else None
        try:
            if pool:
                await pool.__aenter__()
            for wl in workloads:
                # The prompt index runs across the workload's levels, so no two requests of a run share a prompt.
                source = _PromptSource(run.builder, wl, int(s.seed), 0)
                for n in wl.concurrency:
                    ids = {"experiment": experiment, "arm": arm, "repeat": repeat, "workload": wl.name}
                    measure = await _level(run, pool, source, ids, n)
                    done_levels += 1
                    if measure.abort:
                        raise SweepError(
                            f"sweep aborted at {wl.name} concurrency {n}: {measure.abort}; "
                            f"{n_levels - done_levels} level(s) not run; records kept in {out_dir}"
                        )
        finally:
            if pool:
                await pool.__aexit__(None, None, None)
    failed = run.summary.failures(out_dir)
    if fail_on_errors and failed:
        raise failed
    return run.summary


async def _level(run: LoadRun, pool: ClientPool | None, source: _PromptSource, ids: dict, n: int) -> Level:
    """One closed-loop level of concurrency n: warm-up, latency probe, measured requests, its level line."""
    s, wl, summary, abort_check = run.settings, source.workload, run.summary, run.abort_check
    sampling = sampling_for(s, wl)
    n_warm, n_req = int(s.warmup_requests), requests_for(n, s)
    warm = Level(ids, await source.take(n_warm), "warmup", n)
    if n_warm:
        warm.set_floor(float(s.warmup_seconds), source.one)
    await closed_loop(run.client, warm, sampling, run.records, abort_check, lambda: None)
    summary.records += warm.records
    min_s = float(s.min_level_seconds)
    n_req = max(n_req, expected_requests(warm.records, n, min_s))
    measure = Level(ids, await source.take(n_req), "measure", n)
    measure.abort = warm.abort
    latency: list[float] = []
    if measure.abort is None:
        try:
            latency = await latency_probe(run.aux, run.base_url, int(s.latency_probe_gets))
        except SweepError as exc:
            measure.abort = (abort_check() if abort_check else None) or str(exc)
    progress = Progress(f"{wl.name} c={n}", n_req, min_s)
    measure.set_floor(min_s, source.one)
    run.mark("start", {**ids, "concurrency": n})
    limit, worker_loads = float(s.client_lag_limit_ms), []
    monitor = LoopLagMonitor(limit_ms=limit)
    monitor.start()
    tick = functools.partial(progress.tick, measure)
    if pool and measure.abort is None:
        worker_loads = await pool.run(measure, sampling, run.records, abort_check, tick, limit)
    else:
        await closed_loop(run.client, measure, sampling, run.records, abort_check, tick)
    load = merge_loads(await monitor.stop(), worker_loads)
    run.mark("end", {**ids, "concurrency": n})
    run.records.sync()
    summary.records += measure.records

    window = sent_window(measure.records)
    level = LevelRecord(
        **ids,
        concurrency=n,
        requests=len(measure.prompts),
        warmup=len(warm.prompts),
        start=min((r.start for r in window), default=time.time()),
        end=max((r.end or r.start for r in window), default=time.time()),
        latency_ms=latency,
        failed=sum(not r.ok for r in measure.records),
        complete=measure.abort is None,
        client=as_record(load),
    )
    run.finish_level(level, measure.records)
    progress.tick(measure)
    duration = level.end - level.start
    gen = sum(r.completion_tokens or 0 for r in measure.records if r.ok)
    progress.finish(
        f"{duration:.1f} s, {gen / duration if duration > 0 else 0:.1f} output tok/s"
        + lag_note(load)
        + (f", ABORTED: {measure.abort}" if measure.abort else "")
    )
    return measure


async def send_probe(
    base_url: str,
    model: str,
    workload: Workload,
    n: int,
    settings: SweepSettings | Mapping[str, Any] | None,
    out_dir: Path,
    *,
    experiment: str,
    arm: str,
    repeat: int,
    api_key: str | None = None,
    output_tokens: int | None = None,
) -> list[RequestRecord]:
    """Send n requests of `workload` at once (phase=probe), e.g. while a profiler traces the server; their records
    are appended to out_dir/records.jsonl like any other and excluded from metrics. Raises SweepError if any fails."""
    s = SweepSettings.for_caller(settings)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ids = {"experiment": experiment, "arm": arm, "repeat": repeat, "workload": workload.name}
    async with (
        httpx.AsyncClient(headers=headers) as aux,
        Client(
            base_url, model, api=s.api, concurrency=max(n, 1), timeout_s=float(s.request_timeout_s), api_key=api_key
        ) as client,
    ):
        builder = PromptBuilder(aux, base_url, model, api=s.api, system_prompt=s.system_prompt, headers=headers)
        # Probe prompts use their own seed space ("<workload>/probe") so they never repeat a sweep prompt.
        prompts = [
            await builder.prompt(workload.prompt_tokens, int(s.seed), f"{workload.name}/probe", i) for i in range(n)
        ]
        level = Level(ids, prompts, "probe", n)
        sampling = sampling_for(s, workload, output_tokens)
        with JsonlAppender(Path(out_dir) / "records.jsonl") as writer:
            await closed_loop(client, level, sampling, writer, None, lambda: None)
    failed = [r for r in level.records if not r.ok]
    if failed:
        raise SweepError(f"{len(failed)} of {n} probe requests failed (first: {failed[0].error})")
    return level.records


# --- command line -----------------------------------------------------------------------------------------------


def _cmd_sweep(args: argparse.Namespace) -> int:
    from attnbench.config import check_cli_inputs
    from attnbench.measure.metrics import format_table, level_table
    from attnbench.measure.records import read_levels, read_requests

    check_cli_inputs(
        base_url=args.base_url,
        output=args.output,
        minimum={"--requests": (args.requests, 1), "--warmup": (args.warmup, 0), "--timeout": (args.timeout, 0.001)},
    )
    exp = cli_experiment(args)
    known = {w.name: w for w in exp.workloads} if exp else {}
    overrides = {
        "requests_per_level": args.requests,
        "client_processes": args.processes,
        "min_level_seconds": args.min_level_seconds,
        "warmup_seconds": args.warmup_seconds,
    }
    settings, api_key = settings_from_cli(args, exp, overrides)
    workloads = [parse_workload(w, known) for w in args.workload] if args.workload else list(known.values())
    if not workloads:
        raise SweepError("no workload: give --workload NAME=PROMPT:OUTPUT or --config with workloads")
    if args.concurrency:
        levels = tuple(parse_concurrency(args.concurrency))
        workloads = [Workload(w.name, w.prompt_tokens, w.output_tokens, levels) for w in workloads]
    missing = [w.name for w in workloads if not w.concurrency]
    if missing:
        raise SweepError(f"workload(s) {missing} have no concurrency levels: give --concurrency 1,2,4")
    out = Path(args.output)
    ids = dict(experiment=args.experiment, arm=args.arm, repeat=args.repeat)
    run = run_sweep(args.base_url, args.model, workloads, settings, out, **ids, api_key=api_key, fail_on_errors=False)
    summary, error = run_keeping_error(run)
    # The summary is recomputed from the files in every case (also after an abort): that is what was kept.
    collected = read_requests(out / "records.jsonl") if (out / "records.jsonl").exists() else []
    levels = read_levels(out / "levels.jsonl") if (out / "levels.jsonl").exists() else []
    table = level_table(summary.records if summary else collected, summary.levels if summary else levels)
    print(format_table(table))
    write_summary_json(table, args.summary_json)
    if error:
        raise error
    failed = summary.failures(args.output) if summary else None
    if failed:
        raise failed
    return 0


def register(subparsers) -> None:
    p = add_load_parser(
        subparsers,
        "sweep",
        "closed-loop concurrency sweep against a running OpenAI-compatible server",
        "Closed-loop concurrency sweep: for each workload and level N, keep N requests in flight against a running "
        "OpenAI-compatible server; each request's record is written as it finishes.",
        files="records.jsonl and levels.jsonl",
        config_help="experiment config: its workloads and sweep sections are the defaults",
    )
    p.add_argument("--concurrency", help="levels, e.g. 1,2,4 (default: the config's per workload)")
    p.add_argument("--requests", type=int, help="measured requests per level (default max(4N, 16))")
    p.add_argument(
        "--min-level-seconds",
        type=float,
        help="measure each level at least this long, besides its request count (default: by count only)",
    )
    p.add_argument("--warmup-seconds", type=float, help="warm up each level at least this long (default 0)")
    p.add_argument("--processes", type=int, help="client processes the measured requests are spread over (default 1)")
    p.set_defaults(func=_cmd_sweep)
