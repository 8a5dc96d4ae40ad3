"""Open-loop load: requests are sent at scheduled times, at a target rate, whatever the server does.

The closed-loop sweep (sweep.py) answers "how fast at N in flight"; open loop answers "what latency at R requests
per second, and where does it break". Per workload, `workloads.<name>.rates` lists target rates (requests/s); the
`open_loop` config section says how arrivals are drawn and how long each rate runs.

Arrivals, as vLLM's benchmark (vllm/benchmarks/serve.py) defines them: the gaps between sends are drawn from a
gamma distribution with shape = burstiness and scale = 1 / (rate * burstiness), so the mean gap is 1/rate whatever
the burstiness; burstiness 1 is a Poisson process (exponential gaps), below 1 burstier, above 1 more regular;
`constant` sends every 1/rate s. Like vLLM, the cumulative send times are rescaled so that the last of n requests
is scheduled at n / rate exactly (the raw draws' sum misses by a few percent, which would make achieved rates of
different seeds disagree for no reason of the server's); the gaps keep their drawn shape. The draws come from a
numpy Generator seeded by (sweep.seed, workload, rate), so a run's schedule is reproducible.

Each rate is one level. Its request records (records.py RequestRecord, the same fields as the closed loop's) carry
`scheduled` (wall time the schedule asked for) beside `start` (wall time it was sent): start - scheduled is the
client's send lag (lag.py). An optional in-flight cap (`max_in_flight`) holds a request back until one finishes;
the wait shows up as send lag, never as a silently lower rate. Records go to the run folder's openloop.jsonl and
one line per finished rate to openloop_levels.jsonl, appended as they finish, apart from the closed-loop files
so the closed-loop tables keep one row per (workload, concurrency).

Knee mode (`knee: true`): after a workload's listed rates, the last rate is multiplied by `knee_factor` as long as
the level held (`breaks`: no failure, achieved rate within 5% of the target, and with TTFT/TPOT limits at least 90%
of the requests meeting them), up to `knee_max_rates` levels; the last rate that held is the knee.

Derived per level, from those two files only (`level_table`): metrics.py's whole set (TTFT, TPOT, ITL, E2EL,
throughputs, goodput under the level's stored TTFT/TPOT limits), the client's lag, and
  achieved_rate_rps = requests sent / (last actual send - schedule origin): the rate the server was offered
  (equal to the target when every request left on time; lower when the client lagged or the cap held it back).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attnbench.config.experiment import Experiment, OpenLoopSettings, SweepSettings, Workload
from attnbench.errors import SweepError
from attnbench.measure.client import Client, Sampling
from attnbench.measure.lag import LoopLagMonitor, as_record, lag_note
from attnbench.measure.level import Level, LoadRun, SweepSummary, closed_loop, sampling_for, sent_window
from attnbench.measure.loadcli import (
    add_load_parser,
    cli_experiment,
    parse_workload,
    run_keeping_error,
    settings_from_cli,
    write_summary_json,
)
from attnbench.measure.openloop_table import (
    LEVELS_FILE,
    RATE_COLUMNS,
    RECORDS_FILE,
    REPORT_COLUMNS,
    level_table,
    read_run,
    report_section,
)
from attnbench.measure.records import JsonlAppender, LevelRecord, RequestRecord

# level_table, read_run and report_section moved to openloop_table.py; importable from here for report.py and tests.
__all__ = ["RATE_COLUMNS", "REPORT_COLUMNS", "breaks", "level_table", "rate_workloads", "read_run", "report_section"]
__all__ += ["requests_for_rate", "run_open_loop", "schedule"]
ARRIVALS = ("poisson", "gamma", "constant")
KNEE_GOODPUT_SHARE = 0.9  # a level holds while at least this share of its requests meets the limits
DEFAULT_REQUESTS = 32
UNCAPPED_POOL = 4096  # connection-pool ceiling without a cap: the transport opens connections only as needed


def requests_for_rate(rate: float, settings: OpenLoopSettings | Mapping[str, Any]) -> int:
    s = OpenLoopSettings.for_caller(settings)
    if s.requests_per_rate:
        return int(s.requests_per_rate)
    if s.duration_s:
        return max(1, round(rate * float(s.duration_s)))
    return DEFAULT_REQUESTS


def schedule(n: int, rate: float, arrival: str, burstiness: float, rng: np.random.Generator) -> list[float]:
    """Send offsets (s from the schedule origin) of n requests; the last one at n / rate (see the docstring)."""
    if arrival not in ARRIVALS:
        raise SweepError(f"open_loop.arrival must be one of {list(ARRIVALS)}, not {arrival!r}")
    if not rate > 0 or not math.isfinite(rate):
        raise SweepError(f"open-loop rate must be a positive number of requests/s, not {rate!r}")
    if arrival == "constant":
        gaps = np.full(n, 1.0 / rate)
    else:
        shape = 1.0 if arrival == "poisson" else float(burstiness)
        if not shape > 0:
            raise SweepError(f"open_loop.burstiness must be > 0, not {burstiness!r}")
        gaps = rng.gamma(shape=shape, scale=1.0 / (rate * shape), size=n)
    offsets = np.cumsum(gaps)
    offsets *= (n / rate) / offsets[-1]
    return [float(x) for x in offsets]


def _rng(seed: int, workload: str, rate: float) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(f"{workload}@{rate!r}".encode())])


def rate_workloads(cfg: Experiment | Mapping[str, Any]) -> list[tuple[Workload, list[float]]]:
    """(workload, rates) of every config workload that lists `rates`, in config order."""
    exp = cfg if isinstance(cfg, Experiment) else Experiment.from_config(cfg)
    return [(w, [float(r) for r in w.rates]) for w in exp.workloads if w.rates]


async def _send_at_schedule(
    client: Client,
    level: Level,
    offsets: list[float],
    sampling: Sampling,
    writer: JsonlAppender,
    cap: int | None,
    abort_check: Callable[[], str | None] | None,
    origin: tuple[float, float],
) -> None:
    """Start each request at origin + its offset (never waiting for an earlier one); cap in-flight if asked."""
    origin_perf, origin_wall = origin
    slots = asyncio.Semaphore(cap) if cap else None
    tasks: list[asyncio.Task] = []

    def scheduled(index: int) -> dict[str, float]:
        return {"scheduled": round(origin_wall + offsets[index], 6)}

    async def one(index: int) -> None:
        ids = {**level.record_ids(index), **scheduled(index)}
        if slots:
            async with slots:
                record = await client.request(level.prompts[index][0], sampling, ids)
        else:
            record = await client.request(level.prompts[index][0], sampling, ids)
        writer.append(record)
        level.records.append(record)
        level.lost_server(record, abort_check)

    for index, offset in enumerate(offsets):
        delay = origin_perf + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        reason = level.abort or (abort_check() if abort_check else None)
        if reason:
            level.abort = reason
            break
        level.next = index + 1
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    level.record_unsent(writer, scheduled)


class _RateLevel(Level):
    """A closed-loop level's bookkeeping, with request ids that name the rate instead of a concurrency."""

    def __init__(self, ids: dict, prompts, phase: str, cap: int | None, rate: float):
        super().__init__(ids, prompts, phase, cap or 0)
        self.rate = rate

    def record_ids(self, index: int) -> dict:
        out = super().record_ids(index)
        i = self.ids
        tag = "w" if self.phase == "warmup" else ""
        out["request_id"] = (
            f"{i['experiment']}-{i['arm']}-r{i['repeat']}-{i['workload']}-rate{self.rate:g}-{tag}{index}"
        )
        out["rate"] = self.rate
        return out


async def run_open_loop(
    base_url: str,
    model: str,
    plan: list[tuple[Workload, list[float]]],
    settings: SweepSettings | Mapping[str, Any] | None,
    open_loop: OpenLoopSettings | Mapping[str, Any] | None,
    out_dir: Path,
    *,
    experiment: str,
    arm: str,
    repeat: int,
    api_key: str | None = None,
    abort_check: Callable[[], str | None] | None = None,
    on_level: Callable[[str, dict], None] | None = None,
) -> SweepSummary:
    """Every (workload, rate) of `plan` as one open-loop level into out_dir/openloop*.jsonl; see the docstring.
    `settings` and `open_loop`: the experiment's (mappings are completed with the schema's defaults).
    on_level("start"|"end", ids) is called around each level's measured requests (the /metrics scraper).
    Raises SweepError after saving everything when the server becomes unreachable or abort_check() says why."""
    s, o = SweepSettings.for_caller(settings), OpenLoopSettings.for_caller(open_loop)
    out_dir = Path(out_dir)
    for name in (RECORDS_FILE, LEVELS_FILE):
        if (out_dir / name).exists() and (out_dir / name).stat().st_size:
            raise SweepError(f"{out_dir / name} already holds records; write each run to a fresh folder")
    cap = int(o.max_in_flight) if o.max_in_flight else None
    files, hooks = (RECORDS_FILE, LEVELS_FILE), dict(api_key=api_key, abort_check=abort_check, on_level=on_level)
    async with LoadRun(base_url, model, s, out_dir, files, pool_size=cap or UNCAPPED_POOL, **hooks) as run:
        for wl, rates in plan:
            ids = {"experiment": experiment, "arm": arm, "repeat": repeat, "workload": wl.name}
            prompt_index = 0
            rates = list(rates)  # knee mode appends to it
            for rate in rates:
                level, lv = await _rate(run, o, wl, rate, ids, prompt_index)
                prompt_index += lv.warmup + lv.requests
                if level.abort:
                    raise SweepError(
                        f"open loop aborted at {wl.name} rate {rate:g}/s: {level.abort}; records kept in {out_dir}"
                    )
                if o.knee and rate == rates[-1]:
                    broken = breaks(lv, level.records)
                    if broken:  # also at the last rate knee_max_rates allows
                        print(f"{wl.name}: the knee is below {rate:g}/s ({broken})", file=sys.stderr)
                    elif len(rates) < int(o.knee_max_rates):
                        rates.append(round(rate * float(o.knee_factor), 6))
    return run.summary


async def _rate(
    run: LoadRun, o: OpenLoopSettings, wl: Workload, rate: float, ids: dict, prompt_index: int
) -> tuple[Level, LevelRecord]:
    """One open-loop level: warm-up one request at a time, then the measured requests at their scheduled times."""
    s, summary, abort_check = run.settings, run.summary, run.abort_check
    seed, n_warm, n = int(s.seed), int(s.warmup_requests), requests_for_rate(rate, o)
    cap = int(o.max_in_flight) if o.max_in_flight else None
    sampling = sampling_for(s, wl)
    # Own seed space ("<workload>/open"): no open-loop prompt repeats a closed-loop one of the same run.
    space = f"{wl.name}/open"
    prompts = [await run.builder.prompt(wl.prompt_tokens, seed, space, prompt_index + i) for i in range(n_warm + n)]
    warm = _RateLevel(ids, prompts[:n_warm], "warmup", 1, rate)  # one at a time
    await closed_loop(run.client, warm, sampling, run.records, abort_check, lambda: None)
    summary.records += warm.records
    offsets = schedule(n, rate, o.arrival, float(o.burstiness), _rng(seed, wl.name, rate))
    level = _RateLevel(ids, prompts[n_warm:], "measure", cap, rate)
    level.abort = warm.abort
    run.mark("start", {**ids, "rate": rate})
    monitor = LoopLagMonitor(limit_ms=float(s.client_lag_limit_ms))
    monitor.start()
    origin = (time.perf_counter(), time.time())
    if level.abort is None:
        await _send_at_schedule(run.client, level, offsets, sampling, run.records, cap, abort_check, origin)
    load = await monitor.stop()
    run.records.sync()
    run.mark("end", {**ids, "rate": rate})
    summary.records += level.records
    window = sent_window(level.records)
    lv = LevelRecord(
        **ids,
        concurrency=cap or 0,
        requests=n,
        warmup=n_warm,
        start=min((r.start for r in window), default=origin[1]),
        end=max((r.end or r.start for r in window), default=origin[1]),
        failed=sum(not r.ok for r in level.records),
        complete=level.abort is None,
        client=as_record(load),
        rate=rate,
        open_loop={
            "arrival": o.arrival,
            "burstiness": float(o.burstiness),
            "origin": round(origin[1], 6),
            "seed": seed,
            "max_in_flight": cap,
            "ttft_limit_ms": o.ttft_limit_ms,
            "tpot_limit_ms": o.tpot_limit_ms,
        },
    )
    run.finish_level(lv, level.records)
    sent = [r.start for r in window if r.scheduled is not None]
    achieved = len(sent) / (max(sent) - origin[1]) if sent and max(sent) > origin[1] else float("nan")
    print(
        f"{wl.name} rate={rate:g}/s ({o.arrival}): {len(window)}/{n} sent, {lv.failed} failed, "
        f"achieved {achieved:.3g}/s" + lag_note(load) + (f", ABORTED: {level.abort}" if level.abort else ""),
        file=sys.stderr,
    )
    return level, lv


def breaks(level: LevelRecord, records: list[RequestRecord]) -> str | None:
    """Why a level shows the server past its knee (None when it held): a failed request, an achieved rate more than
    5% under the target, or (with TTFT/TPOT limits) fewer than KNEE_GOODPUT_SHARE of the requests meeting them."""
    row = level_table(records, [level]).iloc[0]
    if row["n_failed"]:
        return f"{row['n_failed']} request(s) failed"
    if not row["achieved_rate_rps"] >= 0.95 * level.rate:
        return f"achieved {row['achieved_rate_rps']:.3g}/s of {level.rate:g}/s"
    limits = level.open_loop or {}
    if limits.get("ttft_limit_ms") is not None or limits.get("tpot_limit_ms") is not None:
        share = row["goodput_rps"] * row["duration_s"] / max(row["n_ok"], 1)
        if share < KNEE_GOODPUT_SHARE:
            return f"{share:.0%} of requests met the TTFT/TPOT limits"
    return None


# --- command line -----------------------------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--rates {text!r}: expected a comma-separated list of requests/s, e.g. 0.5,1,2") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise SweepError(f"--rates {text!r}: rates must be positive numbers of requests/s")
    return rates


SUMMARY_COLUMNS = [
    "workload",
    "rate",
    "achieved_rate_rps",
    "n_ok",
    "n_failed",
    "ttft_ms_median",
    "tpot_ms_median",
    "goodput_rps",
    "client_send_lag_ms_p99",
    "client_loop_lag_ms_p99",
    "client_lagged",
]


def _cmd_open_loop(args: argparse.Namespace) -> int:
    exp = cli_experiment(args)
    plan = rate_workloads(exp) if exp else []
    known = {w.name: w for w, _ in plan}
    overrides = {
        "arrival": args.arrival,
        "burstiness": args.burstiness,
        "requests_per_rate": args.requests,
        "duration_s": args.duration,
        "max_in_flight": args.max_in_flight,
        "ttft_limit_ms": args.ttft_limit_ms,
        "tpot_limit_ms": args.tpot_limit_ms,
        "knee": args.knee,
    }
    given = dict(vars(exp.open_loop)) if exp else {}
    open_loop = OpenLoopSettings.for_caller({**given, **{k: v for k, v in overrides.items() if v is not None}})
    settings, api_key = settings_from_cli(args, exp, {})
    if args.workload:
        rates = parse_rates(args.rates) if args.rates else None
        chosen = [parse_workload(w, known) for w in args.workload]
        by_name = dict((w.name, r) for w, r in plan)
        plan = [(w, rates or by_name.get(w.name) or []) for w in chosen]
    elif args.rates:
        plan = [(w, parse_rates(args.rates)) for w, _ in plan]
    if not plan:
        raise SweepError("no workload: give --workload NAME=PROMPT:OUTPUT --rates R1,R2 or --config with rates")
    missing = [w.name for w, r in plan if not r]
    if missing:
        raise SweepError(f"workload(s) {missing} have no rates: give --rates 0.5,1,2")
    ids = dict(experiment=args.experiment, arm=args.arm, repeat=args.repeat)
    out = Path(args.output)
    _, error = run_keeping_error(
        run_open_loop(args.base_url, args.model, plan, settings, open_loop, out, **ids, api_key=api_key)
    )
    table = read_run(out)  # what was kept, recomputed from the files, also after an abort
    if not table.empty:
        print(table[SUMMARY_COLUMNS].to_string(index=False))
        write_summary_json(table, args.summary_json)
    if error:
        raise error
    return 0


def register(subparsers) -> None:
    p = add_load_parser(
        subparsers,
        "open-loop",
        "open-loop load: requests at scheduled times at target rates",
        "Open-loop load: requests sent at scheduled times (Poisson, gamma or constant arrivals) at each target rate, "
        "whatever the server does; each record says when it was due and when it left.",
        files="openloop.jsonl and openloop_levels.jsonl",
        config_help="experiment config: its workloads' rates and open_loop section are the defaults",
    )
    p.add_argument("--rates", help="target rates in requests/s, e.g. 0.5,1,2 (default: the config's per workload)")
    p.add_argument("--arrival", choices=ARRIVALS, help="arrival process (default poisson)")
    p.add_argument("--burstiness", type=float, help="gamma shape, vLLM's --burstiness (default 1)")
    p.add_argument("--requests", type=int, help=f"measured requests per rate (default {DEFAULT_REQUESTS})")
    p.add_argument("--duration", type=float, help="seconds per rate instead of a count (requests = rate x duration)")
    p.add_argument("--max-in-flight", type=int, help="cap on requests in flight (default none)")
    p.add_argument("--ttft-limit-ms", type=float, help="goodput: TTFT limit")
    p.add_argument("--tpot-limit-ms", type=float, help="goodput: TPOT limit")
    p.add_argument(
        "--knee",
        action="store_true",
        default=None,
        help="after the given rates, double the rate while every request succeeds, the achieved rate "
        "keeps up and 90%% meet the limits (at most 8 rates per workload)",
    )
    p.set_defaults(func=_cmd_open_loop)
