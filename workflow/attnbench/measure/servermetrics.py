"""The server's own view: its Prometheus /metrics, scraped while a run measures (servermetrics.jsonl).

vLLM serves queue depth, KV-cache use, preemptions, prefix-cache hits and its own TTFT/TPOT histograms there; they
explain a knee in a curve (requests waiting, cache full, preemptions) and give the server's timings to set against
the client's. The text is parsed with prometheus-client's parser, not by hand.

When: at each level's start (before its first measured request) and end (after its last), tagged with the level,
and every `interval_s` in between by a background thread. Each scrape is one JSON line:
  {"schema": 1, "type": "scrape", "t": wall time, "event": "start"|"end"|"interval", "level": {...}|null,
   "ok": true, "error": null, "values": {sample name: value}}
Values are every `vllm:` sample except histogram buckets, summed over label sets (one engine: the sums are the
values; "_perc" gauges take the maximum instead, a share does not add). A /metrics that is absent, unreachable or
malformed is recorded as a line with ok false and the cause, never an error of the run.

Per level (`summarize`): gauges (running, waiting, KV-cache use) as max over the level's scrapes; counters
(preemptions, prefix-cache hits/queries, prompt/generation tokens) as end - start; the server's mean TTFT and TPOT
from the histograms' sum and count deltas, beside our client's mean TTFT and TPOT from the raw records.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from attnbench.config.experiment import section_defaults
from attnbench.measure.records import JsonlAppender, iter_jsonl

FILE = "servermetrics.jsonl"
DEFAULT_INTERVAL_S = float(section_defaults("server_metrics")["interval_s"])  # the schema's; run-arm imports it
# What the summary reads, by the names vLLM has used across versions (first present wins).
GAUGES = {
    "running": ["vllm:num_requests_running"],
    "waiting": ["vllm:num_requests_waiting"],
    "kv_cache_usage": ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc"],
}
COUNTERS = {
    "preemptions": ["vllm:num_preemptions_total"],
    "prefix_cache_hits": ["vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"],
    "prefix_cache_queries": ["vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"],
    "prompt_tokens": ["vllm:prompt_tokens_total"],
    "generation_tokens": ["vllm:generation_tokens_total"],
}
HISTOGRAMS = {  # mean over the level from _sum and _count deltas, in ms
    "ttft": ["vllm:time_to_first_token_seconds"],
    "tpot": ["vllm:request_time_per_output_token_seconds", "vllm:time_per_output_token_seconds"],
    "itl": ["vllm:inter_token_latency_seconds"],
}


@dataclass
class Scrape:
    """One line of servermetrics.jsonl."""

    t: float  # wall time the scrape was sent
    event: str  # "start" | "end" | "interval"
    level: dict | None = None  # the level's ids for start/end
    ok: bool = False
    error: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    schema: int = 1
    type: str = "scrape"


def parse(text: str) -> dict[str, float]:
    """vllm: samples of a Prometheus text exposition, summed over label sets (see the docstring).
    Raises ValueError when the text is not the exposition format."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if not name.startswith("vllm:") or name.endswith("_bucket") or name.endswith("_created"):
                continue
            value = float(sample.value)
            if name in values:
                values[name] = max(values[name], value) if name.endswith("_perc") else values[name] + value
            else:
                values[name] = value
    return values


class Scraper:
    """`with Scraper(base_url, out_dir / FILE) as s:`; `s.mark("start", ids)` scrapes now, tagged with a level.
    The background thread scrapes every interval_s; every scrape is appended to the file at once."""

    def __init__(
        self,
        base_url: str,
        path: Path,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        headers: dict[str, str] | None = None,
        enabled: bool = True,
    ):
        self.url = base_url.rstrip("/") + "/metrics"
        self.interval_s = interval_s
        self.enabled = enabled  # False: every call is a no-op and no file is written (server_metrics.scrape false)
        self._http = httpx.Client(headers=headers or {}, timeout=10)
        self._out = JsonlAppender(path) if enabled else None
        self._lock = threading.Lock()  # one scrape at a time: the thread's and the sweep's marks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="servermetrics", daemon=True)
        self._closed = False
        self.failures = 0

    def __enter__(self) -> Scraper:
        if self.enabled and self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        with self._lock:
            self._closed = True
            if self._out:
                self._out.close()
            self._http.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.scrape("interval")

    def mark(self, event: str, level: dict) -> None:
        """The level hook of run_sweep / run_open_loop: scrape now, tagged with the level."""
        self.scrape(event, level)

    def scrape(self, event: str, level: dict | None = None) -> Scrape | None:
        with self._lock:
            if self._closed or self._out is None:
                return None
            line = Scrape(t=round(time.time(), 6), event=event, level=level)
            try:
                reply = self._http.get(self.url)
                if reply.status_code != 200:
                    line.error = f"HTTP {reply.status_code} from {self.url}"
                else:
                    line.values = parse(reply.text)
                    line.ok = True
            except httpx.HTTPError as exc:
                line.error = f"{type(exc).__name__}: {exc}"[:300]
            except ValueError as exc:  # the parser's word for text that is not the exposition format
                line.error = f"malformed /metrics: {exc}"[:300]
            self.failures += not line.ok
            self._out.append(line)
            return line


def read(path: Path) -> list[dict]:
    return [d for _, d in iter_jsonl(path)] if Path(path).exists() else []


def _first(values: dict, names: list[str]) -> float | None:
    return next((values[n] for n in names if n in values), None)


def _level_key(level: dict) -> tuple:
    return (level.get("workload"), level.get("concurrency"), level.get("rate"))


def summarize(scrapes: list[dict]) -> list[dict]:
    """One dict per level that has both a start and an end scrape (see the docstring); order of the levels' starts.
    A level whose scrapes failed gets its error and no numbers."""
    starts: dict[tuple, dict] = {}
    out = []
    for s in scrapes:
        if s.get("event") == "start" and s.get("level"):
            starts[_level_key(s["level"])] = s
        elif s.get("event") == "end" and s.get("level") and _level_key(s["level"]) in starts:
            a = starts.pop(_level_key(s["level"]))
            row: dict[str, Any] = {
                **{k: s["level"].get(k) for k in ("workload", "concurrency", "rate")},
                "ok": bool(a["ok"] and s["ok"]),
                "error": a.get("error") or s.get("error"),
            }
            if row["ok"]:
                inside = [x for x in scrapes if x.get("ok") and a["t"] <= x["t"] <= s["t"]]
                for key, names in GAUGES.items():
                    seen = [v for v in (_first(x["values"], names) for x in inside) if v is not None]
                    row[f"{key}_max"] = max(seen) if seen else None
                for key, names in COUNTERS.items():
                    v0, v1 = _first(a["values"], names), _first(s["values"], names)
                    row[key] = None if v0 is None or v1 is None else v1 - v0
                for key, names in HISTOGRAMS.items():
                    n = next((nm for nm in names if nm + "_count" in s["values"]), None)
                    count = (s["values"][n + "_count"] - a["values"].get(n + "_count", 0)) if n else 0
                    total = (s["values"][n + "_sum"] - a["values"].get(n + "_sum", 0)) if n else 0
                    row[f"server_{key}_ms_mean"] = total / count * 1000 if count > 0 else None
                hits, queries = row.get("prefix_cache_hits"), row.get("prefix_cache_queries")
                row["prefix_cache_hit_rate"] = hits / queries if hits is not None and queries else None
            out.append(row)
    return out


def run_summary(run_dir: Path) -> dict:
    """For run.json: scrapes made, failed, first error."""
    scrapes = read(Path(run_dir) / FILE)
    failed = [s for s in scrapes if not s.get("ok")]
    return {"scrapes": len(scrapes), "failed": len(failed), "first_error": failed[0].get("error") if failed else None}


REPORT_COLUMNS = [
    ("running_max", "running max"),
    ("waiting_max", "waiting max"),
    ("kv_cache_usage_max", "KV use max"),
    ("preemptions", "preemptions"),
    ("prefix_cache_hit_rate", "prefix hit rate"),
    ("server_ttft_ms_mean", "server TTFT ms"),
    ("client_ttft_ms_mean", "our TTFT ms"),
    ("server_tpot_ms_mean", "server TPOT ms"),
    ("client_tpot_ms_mean", "our TPOT ms"),
]


def report_section(exp_dir: Path) -> str:
    """Markdown: per run, each level's server view beside ours ('' when no run scraped /metrics)."""
    from attnbench.measure import metrics, openloop

    parts = []
    for run_dir in sorted(Path(exp_dir).glob("runs/*/rep*")):
        scrapes = read(run_dir / FILE)
        if not scrapes:
            continue
        ours: dict[tuple, dict] = {}
        if (run_dir / "levels.jsonl").exists() and (run_dir / "records.jsonl").exists():
            for row in metrics.read_run(run_dir).to_dict("records"):
                ours[(row["workload"], row["concurrency"], None)] = row
        for row in openloop.read_run(run_dir).to_dict("records"):
            ours[(row["workload"], None, row["rate"])] = row
        head = "| level | " + " | ".join(h for _, h in REPORT_COLUMNS) + " |"
        lines = [f"### {run_dir.parent.name} rep{run_dir.name[3:]}", "", head, "|---|" + "---|" * len(REPORT_COLUMNS)]
        for lv in summarize(scrapes):
            label = f"{lv['workload']} " + (f"rate {lv['rate']:g}/s" if lv.get("rate") else f"c={lv['concurrency']}")
            if not lv["ok"]:
                lines.append(f"| {label} | /metrics not available: {lv['error']} |" + " |" * (len(REPORT_COLUMNS) - 1))
                continue
            mine = ours.get((lv["workload"], lv["concurrency"], lv.get("rate")), {})
            lv = {
                **lv,
                "client_ttft_ms_mean": mine.get("ttft_ms_mean"),
                "client_tpot_ms_mean": mine.get("tpot_ms_mean"),
            }
            lines.append(f"| {label} | " + " | ".join(_cell(lv.get(c)) for c, _ in REPORT_COLUMNS) + " |")
        failed = sum(not s.get("ok") for s in scrapes)
        if failed:
            lines.append(
                f"\n{failed} of {len(scrapes)} scrapes failed (first: "
                f"{next(s['error'] for s in scrapes if not s.get('ok'))})."
            )
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return (
        "## The server's view (/metrics)\n\nScraped at each level's start and end and at a fixed interval "
        "(servermetrics.py): gauges as the level's maximum, counters as end minus start, the server's mean "
        "TTFT/TPOT from its histograms beside ours from the raw records.\n\n" + "\n\n".join(parts) + "\n"
    )


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
