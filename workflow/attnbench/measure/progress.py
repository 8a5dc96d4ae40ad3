"""A level's progress on stderr, for the closed-loop sweep (sweep.py)."""

from __future__ import annotations

import sys
import time

from attnbench.measure.level import Level

PROGRESS_EVERY_S = 10.0  # a progress line this often in a log (not a terminal, where the line is redrawn in place)
BAR_WIDTH = 20


class Progress:
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

    def tick(self, level: Level) -> None:
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
