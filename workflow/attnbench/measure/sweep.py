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
import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from attnbench.errors import AttnbenchError, SweepError
from attnbench.measure.client import DEFAULT_SYSTEM_PROMPT, Client, Sampling
from attnbench.measure.lag import DEFAULT_LIMIT_MS, LoopLagMonitor, as_record, lag_note, merge_loads
from attnbench.measure.multiproc import ClientPool
from attnbench.measure.records import JsonlAppender, LevelRecord, RequestRecord, iter_jsonl
from attnbench.measure.workload import PromptBuilder

SWEEP_DEFAULTS = {
    "api": "chat",
    "repeats": 1,
    "warmup_requests": 2,
    "requests_per_level": None,  # None: max(waves_per_level * N, min_requests_per_level)
    "waves_per_level": 4,
    "min_requests_per_level": 16,
    # By count only for direct callers and the bare CLI; an experiment config gets the schema's time floors
    # (workflow/schemas/config.schema.yaml: min_level_seconds, warmup_seconds).
    "min_level_seconds": 0.0,  # a level measures at least this long (and at least its request count)
    "warmup_seconds": 0.0,  # the warm-up runs at least this long (and at least warmup_requests)
    "ignore_eos": True,
    "temperature": 1.0,
    "system_prompt": DEFAULT_SYSTEM_PROMPT,
    "seed": 0,
    "request_timeout_s": 600,
    "latency_probe_gets": 5,
    "api_key_env": None,
    "client_lag_limit_ms": DEFAULT_LIMIT_MS,  # lag.py: a level whose client lag p99 exceeds it is flagged
    "client_processes": 1,  # > 1: measured requests spread over that many client processes (multiproc.py)
}
UNREACHABLE = "cannot connect"  # prefix of the client's error when nothing listens: the server is gone


@dataclass
class Workload:
    name: str
    prompt_tokens: int
    output_tokens: int
    concurrency: list[int]


@dataclass
class SweepSummary:
    levels: list[LevelRecord] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)  # every record written (warmup and probe too)
    n_ok: int = 0  # measured requests
    n_failed: int = 0
    first_error: str | None = None


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


def requests_for(n: int, cfg: dict) -> int:
    if cfg.get("requests_per_level"):
        return int(cfg["requests_per_level"])
    return max(int(cfg.get("waves_per_level", 4)) * n, int(cfg.get("min_requests_per_level", 16)))


class _Level:
    """Shared state of one level's closed loop."""

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
        the level's window (first start to last end) is at least floor_s long."""
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


async def _closed_loop(
    client: Client,
    level: _Level,
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
            if not record.ok and record.error and record.error.startswith(UNREACHABLE):
                reason = abort_check() if abort_check else None
                level.abort = level.abort or reason or f"server unreachable ({record.error})"

    await asyncio.gather(*(worker() for _ in range(min(level.concurrency, len(level.prompts)))))
    if level.abort:  # the requests never sent are failures too, with the cause
        now = time.time()
        for index in range(level.next, len(level.prompts)):
            record = RequestRecord(
                **level.record_ids(index), start=now, end=now, ok=False, error=f"not sent: {level.abort}"
            )
            writer.append(record)
            level.records.append(record)
        level.next = len(level.prompts)


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


PROGRESS_EVERY_S = 10.0  # a progress line this often in a log (not a terminal, where the line is redrawn in place)
BAR_WIDTH = 20


class _Progress:
    """Progress of one level on stderr: on a terminal a bar redrawn in place; in a log (each Snakemake job's) a line
    every PROGRESS_EVERY_S seconds; and one final line per level. Each says the requests done, the seconds measured
    against the level's floor and the output tokens per second so far."""

    def __init__(self, label: str, total: int, min_seconds: float = 0.0):
        self.label, self.total, self.min_seconds = label, total, min_seconds
        self.done, self.failed, self.tokens = 0, 0, 0
        self.first: float | None = None
        self.tty = sys.stderr.isatty()
        self.last_line = time.monotonic()

    def _status(self) -> str:
        elapsed = time.time() - self.first if self.first else 0.0
        floor = f"/{self.min_seconds:.0f}" if self.min_seconds else ""
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.done}/{self.total} done, {self.failed} failed, {elapsed:.1f}{floor} s, "
            f"{rate:.1f} output tok/s so far"
        )

    def tick(self, level: _Level) -> None:
        self.done = len(level.records)
        self.failed = sum(not r.ok for r in level.records)
        self.tokens = sum(r.completion_tokens or 0 for r in level.records if r.ok)
        self.first = min((r.start for r in level.records), default=None)
        if self.tty:
            elapsed = time.time() - self.first if self.first else 0.0
            frac = min(self.done / max(self.total, 1), elapsed / self.min_seconds if self.min_seconds else 1.0, 1.0)
            bar = "#" * int(frac * BAR_WIDTH) + "." * (BAR_WIDTH - int(frac * BAR_WIDTH))
            print(f"\r{self.label}: [{bar}] {self._status()}", end="", file=sys.stderr)
        elif time.monotonic() - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = time.monotonic()
            print(f"{self.label}: {self._status()}", file=sys.stderr, flush=True)

    def finish(self, extra: str) -> None:
        print(
            f"{chr(13) if self.tty else ''}{self.label}: {self.done}/{self.total} done, {self.failed} failed, {extra}",
            file=sys.stderr,
            flush=True,
        )


async def run_sweep(
    base_url: str,
    model: str,
    workloads: list[Workload],
    sweep_cfg: dict,
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
    """Sweep every workload's concurrency levels against a running server; see the module docstring.
    on_level("start"|"end", level ids) is called around each level's measured requests (the /metrics scraper).

    Raises SweepError, after writing everything measured, when the sweep aborts (abort_check() gave a reason or
    the server became unreachable) and, with fail_on_errors, when any measured request failed."""
    cfg = {**SWEEP_DEFAULTS, **{k: v for k, v in (sweep_cfg or {}).items() if v is not None or k == "system_prompt"}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_fresh(out_dir)
    max_conc = max((max(w.concurrency) for w in workloads if w.concurrency), default=1)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    summary = SweepSummary()
    seed = int(cfg["seed"])
    n_levels = sum(len(w.concurrency) for w in workloads)

    client = Client(
        base_url,
        model,
        api=cfg["api"],
        concurrency=max_conc,
        timeout_s=float(cfg["request_timeout_s"]),
        api_key=api_key,
    )
    # A separate small client for /tokenize and the latency GETs, so they never queue behind streaming requests.
    aux = httpx.AsyncClient(headers=headers)
    records = JsonlAppender(out_dir / "records.jsonl")
    levels_file = JsonlAppender(out_dir / "levels.jsonl")
    processes = int(cfg["client_processes"] or 1)
    pool = (
        ClientPool(
            processes,
            base_url=base_url,
            model=model,
            api=cfg["api"],
            concurrency=max_conc,
            timeout_s=float(cfg["request_timeout_s"]),
            api_key=api_key,
        )
        if processes > 1
        else None
    )
    try:
        if pool:
            await pool.__aenter__()
        builder = PromptBuilder(
            aux, base_url, model, api=cfg["api"], system_prompt=cfg["system_prompt"], headers=headers
        )
        done_levels = 0
        for wl in workloads:
            sampling = Sampling(
                max_tokens=wl.output_tokens,
                ignore_eos=bool(cfg["ignore_eos"]),
                temperature=float(cfg["temperature"]),
                system_prompt=cfg["system_prompt"],
            )
            prompt_index = 0  # across the workload's levels, so no two requests of a run share a prompt
            for n in wl.concurrency:
                ids = {"experiment": experiment, "arm": arm, "repeat": repeat, "workload": wl.name}
                n_warm, n_req = int(cfg["warmup_requests"]), requests_for(n, cfg)
                source = _PromptSource(builder, wl, seed, prompt_index)
                label = f"{wl.name} c={n}"

                warm = _Level(ids, await source.take(n_warm), "warmup", n)
                if n_warm:
                    warm.set_floor(float(cfg["warmup_seconds"]), source.one)
                await _closed_loop(client, warm, sampling, records, abort_check, lambda: None)
                summary.records += warm.records
                min_s = float(cfg["min_level_seconds"])
                n_req = max(n_req, expected_requests(warm.records, n, min_s))
                measure = _Level(ids, await source.take(n_req), "measure", n)
                measure.abort = warm.abort
                latency: list[float] = []
                if measure.abort is None:
                    try:
                        latency = await latency_probe(aux, base_url, int(cfg["latency_probe_gets"]))
                    except SweepError as exc:
                        measure.abort = (abort_check() if abort_check else None) or str(exc)
                progress = _Progress(label, n_req, min_s)
                measure.set_floor(min_s, source.one)
                if on_level:
                    on_level("start", {**ids, "concurrency": n})
                limit, worker_loads = float(cfg["client_lag_limit_ms"]), []
                monitor = LoopLagMonitor(limit_ms=limit)
                monitor.start()
                if pool and measure.abort is None:
                    worker_loads = await pool.run(
                        measure, sampling, records, abort_check, functools.partial(progress.tick, measure), limit
                    )
                else:
                    tick = functools.partial(progress.tick, measure)
                    await _closed_loop(client, measure, sampling, records, abort_check, tick)
                load = merge_loads(await monitor.stop(), worker_loads)
                if on_level:
                    on_level("end", {**ids, "concurrency": n})
                records.sync()
                summary.records += measure.records
                prompt_index = source.next

                sent = [r for r in measure.records if not (r.error or "").startswith("not sent")]
                window = sent or measure.records
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
                levels_file.append(level)
                levels_file.sync()
                summary.levels.append(level)
                summary.n_ok += sum(r.ok for r in measure.records)
                summary.n_failed += level.failed
                if summary.first_error is None:
                    summary.first_error = next((r.error for r in measure.records if not r.ok), None)
                done_levels += 1
                progress.tick(measure)
                duration = level.end - level.start
                gen = sum(r.completion_tokens or 0 for r in measure.records if r.ok)
                progress.finish(
                    f"{duration:.1f} s, {gen / duration if duration > 0 else 0:.1f} output tok/s"
                    + lag_note(load)
                    + (f", ABORTED: {measure.abort}" if measure.abort else "")
                )
                if measure.abort:
                    raise SweepError(
                        f"sweep aborted at {wl.name} concurrency {n}: {measure.abort}; "
                        f"{n_levels - done_levels} level(s) not run; records kept in {out_dir}"
                    )
    finally:
        if pool:
            await pool.__aexit__(None, None, None)
        records.close()
        levels_file.close()
        await aux.aclose()
        await client.aclose()
    if fail_on_errors and summary.n_failed:
        raise SweepError(
            f"{summary.n_failed} of {summary.n_ok + summary.n_failed} measured requests failed "
            f"(first: {summary.first_error}); records kept in {out_dir}"
        )
    return summary


async def send_probe(
    base_url: str,
    model: str,
    workload: Workload,
    n: int,
    sweep_cfg: dict,
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
    cfg = {**SWEEP_DEFAULTS, **{k: v for k, v in (sweep_cfg or {}).items() if v is not None or k == "system_prompt"}}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    sampling = Sampling(
        max_tokens=output_tokens or workload.output_tokens,
        ignore_eos=bool(cfg["ignore_eos"]),
        temperature=float(cfg["temperature"]),
        system_prompt=cfg["system_prompt"],
    )
    ids = {"experiment": experiment, "arm": arm, "repeat": repeat, "workload": workload.name}
    async with (
        httpx.AsyncClient(headers=headers) as aux,
        Client(
            base_url,
            model,
            api=cfg["api"],
            concurrency=max(n, 1),
            timeout_s=float(cfg["request_timeout_s"]),
            api_key=api_key,
        ) as client,
    ):
        builder = PromptBuilder(
            aux, base_url, model, api=cfg["api"], system_prompt=cfg["system_prompt"], headers=headers
        )
        # Probe prompts use their own seed space ("<workload>/probe") so they never repeat a sweep prompt.
        prompts = [
            await builder.prompt(workload.prompt_tokens, int(cfg["seed"]), f"{workload.name}/probe", i)
            for i in range(n)
        ]
        level = _Level(ids, prompts, "probe", n)
        with JsonlAppender(Path(out_dir) / "records.jsonl") as writer:
            await _closed_loop(client, level, sampling, writer, None, lambda: None)
    failed = [r for r in level.records if not r.ok]
    if failed:
        raise SweepError(f"{len(failed)} of {n} probe requests failed (first: {failed[0].error})")
    return level.records


# --- command line -----------------------------------------------------------------------------------------------


def parse_workload(text: str, known: dict[str, Workload]) -> Workload:
    """'short=45:512' defines a workload; 'short' names one of the config's."""
    if "=" in text:
        name, _, spec = text.partition("=")
        try:
            prompt, output = (int(x) for x in spec.split(":"))
        except ValueError:
            raise SweepError(
                f"--workload {text!r}: expected NAME=PROMPT_TOKENS:OUTPUT_TOKENS, e.g. short=45:512"
            ) from None
        if prompt < 1 or output < 1:
            raise SweepError(f"--workload {text!r}: token counts must be positive")
        return Workload(name, prompt, output, [])
    if text in known:
        return known[text]
    raise SweepError(
        f"--workload {text!r}: not NAME=PROMPT:OUTPUT and not a workload of the config "
        f"(known: {sorted(known) or 'none'})"
    )


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--concurrency {text!r}: expected a comma-separated list of integers, e.g. 1,2,4") from None
    if not levels or any(n < 1 for n in levels):
        raise SweepError(f"--concurrency {text!r}: levels must be integers >= 1")
    return levels


def apply_common_args(args: argparse.Namespace, cfg: dict, overrides: dict) -> str | None:
    """Put add_common_args' options (and the command's own `overrides`) over the sweep settings `cfg`; returns the
    API key read from the environment variable the settings name (None without one)."""
    common = {
        "api": args.api,
        "warmup_requests": args.warmup,
        "seed": args.seed,
        "request_timeout_s": args.timeout,
        "api_key_env": args.api_key_env,
    }
    cfg.update({k: v for k, v in {**common, **overrides}.items() if v is not None})
    if args.no_system_prompt:
        cfg["system_prompt"] = None
    if not cfg.get("api_key_env"):
        return None
    api_key = os.environ.get(cfg["api_key_env"])
    if not api_key:
        raise SweepError(f"environment variable {cfg['api_key_env']} (--api-key-env) is not set or empty")
    return api_key


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every load command (sweep, open-loop) shares: the server, the request shape, the record ids."""
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument(
        "--workload",
        action="append",
        help="NAME=PROMPT_TOKENS:OUTPUT_TOKENS (e.g. short=45:512) or a workload name of --config; repeatable",
    )
    p.add_argument("--warmup", type=int, help="warmup requests per level, recorded but excluded (default 2)")
    p.add_argument("--api", choices=["chat", "completions"], help="endpoint (default chat)")
    p.add_argument("--api-key-env", help="name of the environment variable holding the API key (never the key)")
    p.add_argument("--seed", type=int, help="prompt seed (default 0)")
    p.add_argument("--timeout", type=float, help="per-request time limit in seconds (default 600)")
    p.add_argument("--no-system-prompt", action="store_true", help="send no system message")
    p.add_argument("--experiment", default="adhoc", help="experiment id written into records")
    p.add_argument("--arm", default="default", help="arm id written into records")
    p.add_argument("--repeat", type=int, default=0, help="repeat index written into records")
    p.add_argument("--summary-json", help="also write the summary table as JSON records to this file")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from attnbench.config import check_cli_inputs
    from attnbench.measure.metrics import format_table, level_table

    check_cli_inputs(
        base_url=args.base_url,
        output=args.output,
        minimum={"--requests": (args.requests, 1), "--warmup": (args.warmup, 0), "--timeout": (args.timeout, 0.001)},
    )
    cfg = dict(SWEEP_DEFAULTS)
    known: dict[str, Workload] = {}
    if args.config:
        from attnbench.config import load_config, workloads_of

        full = load_config(args.config)
        cfg.update(full.get("sweep") or {})
        known = {w.name: w for w in workloads_of(full)}
    api_key = apply_common_args(
        args,
        cfg,
        {
            "requests_per_level": args.requests,
            "client_processes": args.processes,
            "min_level_seconds": args.min_level_seconds,
            "warmup_seconds": args.warmup_seconds,
        },
    )
    workloads = [parse_workload(w, known) for w in args.workload] if args.workload else list(known.values())
    if not workloads:
        raise SweepError("no workload: give --workload NAME=PROMPT:OUTPUT or --config with workloads")
    if args.concurrency:
        levels = parse_concurrency(args.concurrency)
        workloads = [Workload(w.name, w.prompt_tokens, w.output_tokens, list(levels)) for w in workloads]
    missing = [w.name for w in workloads if not w.concurrency]
    if missing:
        raise SweepError(f"workload(s) {missing} have no concurrency levels: give --concurrency 1,2,4")
    summary: SweepSummary | None = None
    error: AttnbenchError | None = None
    collected: list[RequestRecord] = []
    try:
        summary = asyncio.run(
            run_sweep(
                args.base_url,
                args.model,
                workloads,
                cfg,
                Path(args.output),
                experiment=args.experiment,
                arm=args.arm,
                repeat=args.repeat,
                api_key=api_key,
                fail_on_errors=False,
            )
        )
    except SweepError as exc:
        error = exc
    # The summary is recomputed from the files in every case (also after an abort): that is what was kept.
    from attnbench.measure.records import read_levels, read_requests

    out = Path(args.output)
    collected = read_requests(out / "records.jsonl") if (out / "records.jsonl").exists() else []
    levels = read_levels(out / "levels.jsonl") if (out / "levels.jsonl").exists() else []
    table = level_table(summary.records if summary else collected, summary.levels if summary else levels)
    print(format_table(table))
    if args.summary_json:
        # json (not pandas' writer) keeps every float exactly, so the summary can be compared with a recomputation.
        Path(args.summary_json).write_text(json.dumps(table.to_dict(orient="records")) + "\n", encoding="utf-8")
    if error:
        raise error
    if summary and summary.n_failed:
        raise SweepError(
            f"{summary.n_failed} of {summary.n_ok + summary.n_failed} measured requests failed "
            f"(first: {summary.first_error}); records kept in {args.output}"
        )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="closed-loop concurrency sweep against a running OpenAI-compatible server")
    add_common_args(p)
    p.add_argument("--concurrency", help="levels, e.g. 1,2,4 (default: the config's per workload)")
    p.add_argument("--requests", type=int, help="measured requests per level (default max(4N, 16))")
    p.add_argument(
        "--min-level-seconds",
        type=float,
        help="measure each level at least this long, besides its request count (default: by count only)",
    )
    p.add_argument("--warmup-seconds", type=float, help="warm up each level at least this long (default 0)")
    p.add_argument("--output", required=True, help="run folder: records.jsonl and levels.jsonl are written here")
    p.add_argument("--config", help="experiment config: its workloads and sweep sections are the defaults")
    p.add_argument("--processes", type=int, help="client processes the measured requests are spread over (default 1)")
    p.set_defaults(func=_cmd_sweep)
