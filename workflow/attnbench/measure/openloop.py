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
import json
import math
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from attnbench.errors import SweepError
from attnbench.measure.client import Client, Sampling
from attnbench.measure.lag import LoopLagMonitor, as_record, lag_note
from attnbench.measure.metrics import KEY_COLUMNS, level_row
from attnbench.measure.records import JsonlAppender, LevelRecord, RequestRecord, read_levels, read_requests
from attnbench.measure.sweep import (
    SWEEP_DEFAULTS,
    UNREACHABLE,
    SweepSummary,
    Workload,
    _closed_loop,
    _Level,
    add_common_args,
)
from attnbench.measure.workload import PromptBuilder

ARRIVALS = ("poisson", "gamma", "constant")
OPEN_LOOP_DEFAULTS = {
    "arrival": "poisson",
    "burstiness": 1.0,  # gamma only (poisson is gamma with 1)
    "requests_per_rate": None,  # None: round(rate * duration_s), or 32 without a duration
    "duration_s": None,
    "max_in_flight": None,  # None: no cap
    "ttft_limit_ms": None,  # goodput: requests meeting every limit, per second
    "tpot_limit_ms": None,
    # "find the knee": after the listed rates, multiply the last by knee_factor while the level holds (see breaks)
    "knee": False,
    "knee_factor": 2.0,
    "knee_max_rates": 8,  # levels per workload at most, listed rates included
}
KNEE_GOODPUT_SHARE = 0.9  # a level holds while at least this share of its requests meets the limits
DEFAULT_REQUESTS = 32
UNCAPPED_POOL = 4096  # connection-pool ceiling without a cap: the transport opens connections only as needed
RECORDS_FILE, LEVELS_FILE = "openloop.jsonl", "openloop_levels.jsonl"
RATE_COLUMNS = ["rate", "arrival", "burstiness", "max_in_flight", "sent", "achieved_rate_rps"]


def open_cfg(cfg: dict | None) -> dict:
    return {**OPEN_LOOP_DEFAULTS, **{k: v for k, v in (cfg or {}).items() if v is not None}}


def requests_for_rate(rate: float, ocfg: dict) -> int:
    if ocfg.get("requests_per_rate"):
        return int(ocfg["requests_per_rate"])
    if ocfg.get("duration_s"):
        return max(1, round(rate * float(ocfg["duration_s"])))
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


def rate_workloads(cfg: dict) -> list[tuple[Workload, list[float]]]:
    """(workload, rates) of every config workload that lists `rates`, in config order."""
    from attnbench.config import workloads_of

    rates = {name: w.get("rates") for name, w in cfg["workloads"].items()}
    return [(w, [float(r) for r in rates[w.name]]) for w in workloads_of(cfg) if rates.get(w.name)]


async def _send_at_schedule(
    client: Client,
    level: _Level,
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

    async def one(index: int) -> None:
        ids = {**level.record_ids(index), "scheduled": round(origin_wall + offsets[index], 6)}
        if slots:
            async with slots:
                record = await client.request(level.prompts[index][0], sampling, ids)
        else:
            record = await client.request(level.prompts[index][0], sampling, ids)
        writer.append(record)
        level.records.append(record)
        if not record.ok and (record.error or "").startswith(UNREACHABLE):
            level.abort = (
                level.abort or (abort_check() if abort_check else None) or f"server unreachable ({record.error})"
            )

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
    if level.abort:  # the requests never sent are failures too, with the cause
        now = time.time()
        for index in range(level.next, len(level.prompts)):
            record = RequestRecord(
                **level.record_ids(index),
                start=now,
                end=now,
                ok=False,
                scheduled=round(origin_wall + offsets[index], 6),
                error=f"not sent: {level.abort}",
            )
            writer.append(record)
            level.records.append(record)


class _RateLevel(_Level):
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
    sweep_cfg: dict,
    open_loop: dict,
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
    on_level("start"|"end", ids) is called around each level's measured requests (the /metrics scraper).
    Raises SweepError after saving everything when the server becomes unreachable or abort_check() says why."""
    cfg = {**SWEEP_DEFAULTS, **{k: v for k, v in (sweep_cfg or {}).items() if v is not None or k == "system_prompt"}}
    ocfg = open_cfg(open_loop)
    out_dir = Path(out_dir)
    for name in (RECORDS_FILE, LEVELS_FILE):
        if (out_dir / name).exists() and (out_dir / name).stat().st_size:
            raise SweepError(f"{out_dir / name} already holds records; write each run to a fresh folder")
    cap = int(ocfg["max_in_flight"]) if ocfg["max_in_flight"] else None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    seed = int(cfg["seed"])
    summary = SweepSummary()
    client = Client(
        base_url,
        model,
        api=cfg["api"],
        concurrency=cap or UNCAPPED_POOL,
        timeout_s=float(cfg["request_timeout_s"]),
        api_key=api_key,
    )
    aux = httpx.AsyncClient(headers=headers)
    records = JsonlAppender(out_dir / RECORDS_FILE)
    levels_file = JsonlAppender(out_dir / LEVELS_FILE)
    try:
        builder = PromptBuilder(
            aux, base_url, model, api=cfg["api"], system_prompt=cfg["system_prompt"], headers=headers
        )
        for wl, rates in plan:
            sampling = Sampling(
                max_tokens=wl.output_tokens,
                ignore_eos=bool(cfg["ignore_eos"]),
                temperature=float(cfg["temperature"]),
                system_prompt=cfg["system_prompt"],
            )
            ids = {"experiment": experiment, "arm": arm, "repeat": repeat, "workload": wl.name}
            # Own seed space ("<workload>/open"): no open-loop prompt repeats a closed-loop one of the same run.
            space, prompt_index = f"{wl.name}/open", 0
            n_warm = int(cfg["warmup_requests"])
            rates = list(rates)  # knee mode appends to it
            for rate in rates:
                n = requests_for_rate(rate, ocfg)
                prompts = [
                    await builder.prompt(wl.prompt_tokens, seed, space, prompt_index + i) for i in range(n_warm + n)
                ]
                prompt_index += n_warm + n
                warm = _RateLevel(ids, prompts[:n_warm], "warmup", 1, rate)  # one at a time
                await _closed_loop(client, warm, sampling, records, abort_check, lambda: None)
                summary.records += warm.records
                offsets = schedule(n, rate, ocfg["arrival"], float(ocfg["burstiness"]), _rng(seed, wl.name, rate))
                level = _RateLevel(ids, prompts[n_warm:], "measure", cap, rate)
                level.abort = warm.abort
                if on_level:
                    on_level("start", {**ids, "rate": rate})
                monitor = LoopLagMonitor(limit_ms=float(cfg["client_lag_limit_ms"]))
                monitor.start()
                origin = (time.perf_counter(), time.time())
                if level.abort is None:
                    await _send_at_schedule(client, level, offsets, sampling, records, cap, abort_check, origin)
                load = await monitor.stop()
                records.sync()
                if on_level:
                    on_level("end", {**ids, "rate": rate})
                summary.records += level.records
                window = [r for r in level.records if not (r.error or "").startswith("not sent")] or level.records
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
                        "arrival": ocfg["arrival"],
                        "burstiness": float(ocfg["burstiness"]),
                        "origin": round(origin[1], 6),
                        "seed": seed,
                        "max_in_flight": cap,
                        "ttft_limit_ms": ocfg["ttft_limit_ms"],
                        "tpot_limit_ms": ocfg["tpot_limit_ms"],
                    },
                )
                levels_file.append(lv)
                levels_file.sync()
                summary.levels.append(lv)
                summary.n_ok += sum(r.ok for r in level.records)
                summary.n_failed += lv.failed
                if summary.first_error is None:
                    summary.first_error = next((r.error for r in level.records if not r.ok), None)
                sent = [r.start for r in window if r.scheduled is not None]
                achieved = len(sent) / (max(sent) - origin[1]) if sent and max(sent) > origin[1] else float("nan")
                print(
                    f"{wl.name} rate={rate:g}/s ({ocfg['arrival']}): {len(window)}/{n} sent, {lv.failed} failed, "
                    f"achieved {achieved:.3g}/s"
                    + lag_note(load)
                    + (f", ABORTED: {level.abort}" if level.abort else ""),
                    file=sys.stderr,
                )
                if level.abort:
                    raise SweepError(
                        f"open loop aborted at {wl.name} rate {rate:g}/s: {level.abort}; records kept in {out_dir}"
                    )
                if ocfg["knee"] and rate == rates[-1] and len(rates) < int(ocfg["knee_max_rates"]):
                    broken = breaks(lv, level.records)
                    if broken:
                        print(f"{wl.name}: the knee is below {rate:g}/s ({broken})", file=sys.stderr)
                    else:
                        rates.append(round(rate * float(ocfg["knee_factor"]), 6))
    finally:
        records.close()
        levels_file.close()
        await aux.aclose()
        await client.aclose()
    return summary


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


# --- metrics from the raw files ----------------------------------------------------------------------------------


def level_table(records: list[RequestRecord], levels: list[LevelRecord]) -> pd.DataFrame:
    """One row per open-loop level (experiment, arm, repeat, workload, rate): metrics.py's columns, the client's
    lag, goodput under the level's stored limits, and the rate columns (RATE_COLUMNS)."""
    by_key: dict[tuple, list[RequestRecord]] = {}
    for r in records:
        if r.phase == "measure":
            by_key.setdefault((r.experiment, r.arm, r.repeat, r.workload, r.rate), []).append(r)
    rows = []
    for lv in levels:
        meta = lv.open_loop or {}
        measured = by_key.get((lv.experiment, lv.arm, lv.repeat, lv.workload, lv.rate), [])
        limits = {"ttft_limit_ms": meta.get("ttft_limit_ms"), "tpot_limit_ms": meta.get("tpot_limit_ms")}
        row = level_row(lv, measured, **limits)
        row.setdefault("goodput_rps", float("nan"))
        sent = [r.start for r in measured if not (r.error or "").startswith("not sent")]
        origin = meta.get("origin")
        span = (max(sent) - origin) if sent and origin is not None else 0.0
        row.update(
            {
                "rate": lv.rate,
                "arrival": meta.get("arrival"),
                "burstiness": meta.get("burstiness"),
                "max_in_flight": meta.get("max_in_flight") or 0,
                "sent": len(sent),
                "achieved_rate_rps": len(sent) / span if span > 0 else float("nan"),
            }
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    keys = [c for c in KEY_COLUMNS if c != "concurrency"] + ["rate"]
    first = keys + ["arrival", "burstiness", "max_in_flight", "sent", "achieved_rate_rps", "goodput_rps"]
    frame = frame[first + [c for c in frame.columns if c not in first and c != "concurrency"]]
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True)


def read_run(run_dir: str | Path) -> pd.DataFrame:
    run_dir = Path(run_dir)
    if not (run_dir / LEVELS_FILE).exists():
        return pd.DataFrame()
    return level_table(read_requests(run_dir / RECORDS_FILE), read_levels(run_dir / LEVELS_FILE))


REPORT_COLUMNS = [
    ("workload", "workload"),
    ("rate", "target/s"),
    ("achieved_rate_rps", "achieved/s"),
    ("n_ok", "ok"),
    ("n_failed", "failed"),
    ("ttft_ms_median", "TTFT p50 ms"),
    ("ttft_ms_p99", "TTFT p99 ms"),
    ("tpot_ms_median", "TPOT p50 ms"),
    ("goodput_rps", "goodput/s"),
    ("output_throughput_tps", "out tok/s"),
    ("client_send_lag_ms_p99", "send lag p99 ms"),
    ("client_loop_lag_ms_p99", "loop lag p99 ms"),
]


def report_section(exp_dir: Path) -> str:
    """Markdown: one table per run that ran open-loop levels ('' when none did). (!) marks a client-lagged level."""
    parts = []
    for run_dir in sorted(Path(exp_dir).glob("runs/*/rep*")):
        frame = read_run(run_dir)
        if frame.empty:
            continue
        head = "| " + " | ".join(h for _, h in REPORT_COLUMNS) + " |"
        lines = [
            f"### {run_dir.parent.name} rep{run_dir.name[3:]} ({frame['arrival'].iloc[0]} arrivals)",
            "",
            head,
            "|" + "---|" * len(REPORT_COLUMNS),
        ]
        for row in frame.to_dict("records"):
            cells = [_cell(row.get(c)) for c, _ in REPORT_COLUMNS]
            if row.get("client_lagged"):
                cells[0] += " (!)"
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return (
        "## Open loop\n\nRequests sent at scheduled times (openloop.py); achieved = requests sent / time to the "
        "last send. (!) marks a level where our client lagged (lag.py).\n\n" + "\n\n".join(parts) + "\n"
    )


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


# --- command line -----------------------------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--rates {text!r}: expected a comma-separated list of requests/s, e.g. 0.5,1,2") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise SweepError(f"--rates {text!r}: rates must be positive numbers of requests/s")
    return rates


def _cmd_open_loop(args: argparse.Namespace) -> int:
    from attnbench.measure.sweep import apply_common_args, parse_workload

    cfg = dict(SWEEP_DEFAULTS)
    ocfg: dict = {}
    known: dict[str, Workload] = {}
    plan: list[tuple[Workload, list[float]]] = []
    if args.config:
        from attnbench.config import load_config

        full = load_config(args.config)
        cfg.update(full.get("sweep") or {})
        ocfg.update(full.get("open_loop") or {})
        plan = rate_workloads(full)
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
    ocfg.update({k: v for k, v in overrides.items() if v is not None})
    api_key = apply_common_args(args, cfg, {})
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
    error: SweepError | None = None
    try:
        asyncio.run(
            run_open_loop(
                args.base_url,
                args.model,
                plan,
                cfg,
                ocfg,
                Path(args.output),
                experiment=args.experiment,
                arm=args.arm,
                repeat=args.repeat,
                api_key=api_key,
            )
        )
    except SweepError as exc:
        error = exc
    table = read_run(Path(args.output))  # what was kept, recomputed from the files, also after an abort
    if not table.empty:
        cols = [
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
        print(table[cols].to_string(index=False))
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(table.to_dict(orient="records")) + "\n", encoding="utf-8")
    if error:
        raise error
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("open-loop", help="open-loop load: requests at scheduled times at target rates")
    add_common_args(p)
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
    p.add_argument("--output", required=True, help="run folder: openloop.jsonl and openloop_levels.jsonl go here")
    p.add_argument("--config", help="experiment config: its workloads' rates and open_loop section are the defaults")
    p.set_defaults(func=_cmd_open_loop)
