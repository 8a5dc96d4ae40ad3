"""GPU clocks, power and temperature while a run measures, so two hosts' numbers can be told apart by more than
their name.

Two H100s of the same model differ by a few percent in decode speed when one runs at a lower power cap, a lower SM
clock or hotter; that is the size of the differences a reproduction argues about. `GpuMonitor` runs one
`nvidia-smi --query-gpu=... -lms N` process for the duration of a `with` block and appends each line to the run
folder's gpu.jsonl as it arrives (raw first, like records.jsonl); `summarize` reduces the file to the figures the
report prints. A host without nvidia-smi (the CPU engine) gets no file and a summary that says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# Field names as nvidia-smi --help-query-gpu spells them; the last is the newer name of clocks_throttle_reasons.active
# (drivers before 535 know only the old one, so the monitor asks which one this driver accepts).
FIELDS = [
    "index",
    "uuid",
    "clocks.sm",
    "clocks.mem",
    "clocks.max.sm",
    "power.draw",
    "power.limit",
    "temperature.gpu",
    "utilization.gpu",
]
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
# A sample counts as "busy" when the GPU ran kernels at least this share of the sample period: idle samples (server
# waiting between levels) would pull the clock and power medians towards idle values.
BUSY_UTILIZATION = 50


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_line(line: str, reason_field: str) -> dict | None:
    """One CSV line of the query (noheader, nounits) as a sample; None for anything else nvidia-smi prints."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(FIELDS) + 1 or not parts[0].isdigit():
        return None
    values = dict(zip(FIELDS + [reason_field], parts))
    sample: dict = {
        "index": int(values["index"]),
        # A stable, non-identifying name: equal on the same card, different between cards.
        "gpu": hashlib.sha256(values["uuid"].encode()).hexdigest()[:12],
    }
    for field in FIELDS[2:]:
        sample[field] = _number(values[field])
    reasons = values[reason_field]
    sample["reasons"] = int(reasons, 16) if reasons.lower().startswith("0x") else None
    return sample


def _reason_field(exe: str) -> str | None:
    for field in REASON_FIELDS:
        query = ",".join(FIELDS + [field])
        try:
            proc = subprocess.run(
                [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode == 0:
            return field
    return None


class GpuMonitor:
    """`with GpuMonitor(path):` samples every `period_ms` into `path` until the block ends (or fails)."""

    def __init__(self, path: Path, period_ms: int = 1000, exe: str | None = None) -> None:
        self.path = Path(path)
        self.period_ms = period_ms
        self.exe = exe or shutil.which("nvidia-smi")
        self.reason_field: str | None = None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMonitor:
        if self.exe is None:  # no nvidia-smi: a CPU host, nothing to sample
            return self
        self.reason_field = _reason_field(self.exe)
        if self.reason_field is None:
            # nvidia-smi is there but answers no query (no driver, no device): the run goes on without telemetry,
            # and says so rather than leaving an unexplained "not sampled".
            print(f"gpumon: {self.exe} answers no --query-gpu; this run has no GPU samples", file=sys.stderr)
            return self
        query = ",".join(FIELDS + [self.reason_field])
        self._proc = subprocess.Popen(
            [self.exe, f"--query-gpu={query}", "--format=csv,noheader,nounits", f"-lms={self.period_ms}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._pump, name="gpumon", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self.path.open("a", encoding="utf-8") as fh:
            for line in self._proc.stdout:
                sample = parse_line(line, self.reason_field or "")
                if sample is not None:
                    fh.write(json.dumps({"t": round(time.time(), 3), **sample}, sort_keys=True) + "\n")
                    fh.flush()

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)


def read_samples(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize(path: Path) -> dict | None:
    """Per-run figures of GPU 0 from gpu.jsonl: medians over busy samples, the power cap, the hottest moment and
    every clock-event reason seen (a bit mask as nvidia-smi reports it: 0x4 power cap, 0x20/0x40 thermal...).
    None when the run has no samples."""
    samples = [s for s in read_samples(path) if s.get("index") == 0]
    if not samples:
        return None
    busy = [s for s in samples if (s.get("utilization.gpu") or 0) >= BUSY_UTILIZATION]

    def med(key: str, rows: list[dict]) -> float | None:
        values = [s[key] for s in rows if s.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    reasons = 0
    for s in busy:
        reasons |= s.get("reasons") or 0
    temps = [s["temperature.gpu"] for s in samples if s.get("temperature.gpu") is not None]
    return {
        "gpu": samples[0]["gpu"],
        "samples": len(samples),
        "busy_samples": len(busy),
        "sm_clock_mhz_median": med("clocks.sm", busy),
        "sm_clock_max_mhz": med("clocks.max.sm", samples),
        "mem_clock_mhz_median": med("clocks.mem", busy),
        "power_w_median": med("power.draw", busy),
        "power_limit_w": med("power.limit", samples),
        "temperature_c_max": max(temps) if temps else None,
        "clock_event_reasons": f"0x{reasons:x}",
    }
