"""The figures of `attnbench compare`: each metric side by side per workload (one line per source and arm), and
each ratio to the base with its interval. Same look and deterministic saving as the run plots (plots.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnbench.analysis import plots as plots_mod

# Metrics drawn (one panel each); the article's three headline numbers.
PLOTTED = ["generation_throughput_tps", "prompt_throughput_tps", "max_ttft_s"]


def _short_names(sbs: pd.DataFrame) -> dict[str, str]:
    """Legend name of each source: its GPU type when that is unique among the sources, else its label."""
    gpu_of = dict(zip(sbs["source"], sbs["gpu_type"]))
    gpus = list(gpu_of.values())
    return {src: gpu if gpus.count(gpu) == 1 else src for src, gpu in gpu_of.items()}


def _legend_below(fig, axes) -> None:
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)


def _workload_panels(frame: pd.DataFrame, plt):
    """One figure per workload of `frame` with a panel per plotted metric: yields (workload, fig, axes,
    [(ax, metric, rows of that metric)]) for the caller to draw into."""
    for workload in dict.fromkeys(frame["workload"]):
        sub = frame[(frame["workload"] == workload) & frame["metric"].isin(PLOTTED)]
        if sub.empty:
            continue
        metrics = [m for m in PLOTTED if m in set(sub["metric"])]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        yield workload, fig, axes, [(ax, m, sub[sub["metric"] == m]) for ax, m in zip(axes[0], metrics)]


def write_plots(sbs: pd.DataFrame, rat: pd.DataFrame, out_dir: Path, references: set[str]) -> list[Path]:
    """Metric vs concurrency per workload, one line per (source, arm), dashed for a published reference (its
    label in `references`); and the ratios with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = _short_names(sbs)
    written = []
    with plt.rc_context(plots_mod.RC):
        for workload, fig, axes, panels in _workload_panels(sbs, plt):
            for ax, metric, msub in panels:
                for (_gpu, src, arm), g in msub.groupby(["gpu_type", "source", "arm"], sort=False):
                    g = g.sort_values("concurrency")
                    style = "--" if src in references else "-"
                    ax.errorbar(
                        g["concurrency"],
                        g["mean"],
                        yerr=g["std"].fillna(0),
                        linestyle=style,
                        marker="o",
                        capsize=2,
                        label=f"{name[src]} {arm}",
                    )
                plots_mod.setup_concurrency_axis(ax, sorted(msub["concurrency"].unique()))
                ax.set_title(metric)
            _legend_below(fig, axes)
            fig.suptitle(f"{workload}: side by side (mean ± std over repeats)", y=1.03)
            written += plots_mod.save_figure(fig, out_dir, f"side_by_side_{workload}")
        for workload, fig, axes, panels in _workload_panels(rat, plt):
            for ax, metric, msub in panels:
                for (src, arm, bsrc, barm), g in msub.groupby(["source", "arm", "base_source", "base_arm"], sort=False):
                    g = g.sort_values("concurrency")
                    low = (g["ratio"] - g["ci_low"]).fillna(0).clip(lower=0)
                    high = (g["ci_high"] - g["ratio"]).fillna(0).clip(lower=0)
                    ax.errorbar(
                        g["concurrency"],
                        g["ratio"],
                        yerr=[low, high],
                        marker="o",
                        capsize=2,
                        label=f"{name[src]} {arm} / {name[bsrc]} {barm}",
                    )
                ax.axhline(1.0, color="grey", linewidth=0.8)
                plots_mod.setup_concurrency_axis(ax, sorted(msub["concurrency"].unique()))
                ax.set_title(f"{metric} ratio")
            _legend_below(fig, axes)
            fig.suptitle(f"{workload}: ratio to base (95% interval where 3+ repeats carry one)", y=1.03)
            written += plots_mod.save_figure(fig, out_dir, f"ratios_{workload}")
    return written
