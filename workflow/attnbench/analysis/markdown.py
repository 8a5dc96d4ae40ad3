"""Text of the tables: number formats, padded pipe tables in llmapibenchmark's look, and the flag marks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from attnbench.analysis.stats import MIN_REPEATS_FOR_INTERVAL, repeats_text
from attnbench.measure import metrics

FLAG_MARK = "(!)"  # appended to the arm name of a flagged run in every markdown table


def fmt(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def fmt_cell(value: Any, decimals: int, flags: str = "") -> str:
    """A number with the codes of what touches it: '0.007 [single_chunk]', 'n/a [prompt_formula]'."""
    text = fmt(value, decimals)
    return f"{text} [{flags.replace('+', ', ')}]" if isinstance(flags, str) and flags else text


def fmt_interval(lo: float, hi: float, n_arm: int, n_base: int) -> str:
    """'[0.964, 1.031]', or 'n/a (2 repeats)' where the repeats do not carry an interval."""
    if min(n_arm, n_base) < MIN_REPEATS_FOR_INTERVAL or math.isnan(lo):
        return f"n/a ({repeats_text(n_arm, n_base)})"
    return f"[{lo:.3f}, {hi:.3f}]"


def fmt_spread(mean: float, sd: float, cv: float, decimals: int) -> str:
    """'752.26 ± 3.10 (0.4%)': mean ± sample sd (CV) over repeats; the sd is n/a with one repeat."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(sd):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f} ({100 * cv:.1f}%)"


def md_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A padded pipe table (the look of llmapibenchmark's output); columns in `right` are right-aligned."""
    right = set(range(len(headers))) if right is None else right
    # A '|' inside a cell (free text: descriptions, error reasons) would split it; '/' reads the same.
    headers = [h.replace("|", "/") for h in headers]
    rows = [[c.replace("|", "/") for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths))
    return "\n".join([line(headers), rule + "|"] + [line(r) for r in rows]) + "\n"


def arm_label(arm: str, flagged: bool) -> str:
    return f"{arm} {FLAG_MARK}" if flagged else arm


FLAG_WORDS = {
    "run": "a run of the level is flagged (did not finish, or its kernels contradict its arm)",
    "machines": "the two arms' repeats ran on different GPUs (or in different proportions): the ratio includes the "
    "machines' own difference",
    **metrics.ARTIFACTS,
}


def flag_legend(codes: Iterable[str]) -> str:
    """One line naming what each code in a table means ('' when none appears)."""
    codes = sorted({c for text in codes for c in str(text).split("+") if c})
    return "Flags: " + "; ".join(f"[{c}] {FLAG_WORDS.get(c, c)}" for c in codes) + ".\n" if codes else ""
