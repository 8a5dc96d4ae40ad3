"""The `machines` flag: a comparison whose two arms ran on different GPUs (runs merged from several sessions, as the
published vLLM 0.7.1 errata bundle's are) says so, because the ratio then includes the machines' own difference."""

import pandas as pd

from attnbench.analysis import markdown, stats

CFG = {
    "arms": [{"name": "base"}, {"name": "fast"}],
    "baseline": "base",
    "workloads": {"short": {}},
    "analysis": {},
}


def _levels(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"arm": arm, "workload": "short", "concurrency": 1, "repeat": k, "generation_throughput_tps": v}
        for arm, vs in values.items()
        for k, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def _flags(cards):
    df = _levels({"base": [100.0, 101.0, 99.0], "fast": [110.0, 111.0, 109.0]})
    comp = stats.comparisons_frame(df, CFG, pd.DataFrame(), cards)
    (row,) = comp[comp["metric"] == "generation_throughput_tps"].itertuples()
    return row.flags


def test_arms_on_different_cards_are_flagged():
    cards = {("base", k): "aaaaaaaaaaaa" for k in range(3)} | {("fast", k): "bbbbbbbbbbbb" for k in range(3)}
    assert _flags(cards) == "machines"
    assert "different GPUs" in markdown.flag_legend(["machines"])


def test_the_same_cards_in_other_proportions_are_flagged():
    cards = {("base", k): "aaaaaaaaaaaa" for k in range(3)} | {("fast", k): "aaaaaaaaaaaa" for k in range(3)}
    cards[("base", 2)] = "bbbbbbbbbbbb"
    assert _flags(cards) == "machines"


def test_one_card_or_unknown_cards_raise_no_flag():
    one = {(arm, k): "aaaaaaaaaaaa" for arm in ("base", "fast") for k in range(3)}
    assert _flags(one) == ""
    unknown = dict(one) | {("fast", 0): None}  # a CPU run, or a run.json without GPU telemetry
    assert _flags(unknown) == ""
    assert _flags(None) == ""
