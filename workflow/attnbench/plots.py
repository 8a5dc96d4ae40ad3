"""Plots of one experiment (PNG + SVG), drawn from tables/levels.csv.

Per workload: throughput (generation and prompt) vs concurrency, TTFT (min / median / max) vs concurrency, and the
speedup of each arm over its baseline with the bootstrap interval of aggregate.py. Error bars are the sample standard
deviation over repeats. A level with a flagged run (kernels contradict the arm's expectation, or the run failed) is
drawn with a red cross and its arm is labelled "(!)" in the legend.

SVGs are byte-deterministic: a fixed `svg.hashsalt` and no date in the metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from attnbench import aggregate  # noqa: E402

PLOTS_DIR = "plots"
KINDS = ("throughput", "ttft", "speedup")
FORMATS = ("png", "svg")
RC = {"svg.hashsalt": "attnbench", "svg.fonttype": "none", "font.size": 9, "figure.dpi": 100}
FLAG_STYLE = dict(marker="x", color="red", markersize=11, markeredgewidth=2, linestyle="none", zorder=5)


def plot_names(cfg: dict) -> list[str]:
    """The file names `write_plots` produces for a config (Snakemake lists them as outputs)."""
    return [f"{kind}_{wl}.{ext}" for wl in aggregate.workload_names(cfg) for kind in KINDS for ext in FORMATS]


def arm_color(index: int) -> str:
    """An arm keeps its colour (by its place in the config) in every plot, whichever arms have data."""
    return f"C{index % 10}"


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """PNG and SVG without dates or software versions in their metadata, so equal data gives equal bytes (also used
    by compare.py)."""
    paths = []
    for ext in FORMATS:
        path = out_dir / f"{stem}.{ext}"
        meta = {"Date": None} if ext == "svg" else {"Software": None}
        fig.savefig(path, format=ext, metadata=meta, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def setup_concurrency_axis(ax, concurrency: list[int]) -> None:
    """Log2 x axis with a tick at each measured concurrency (also used by compare.py)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrency)
    ax.set_xticklabels([str(c) for c in concurrency])
    ax.set_xlabel("concurrency")
    ax.grid(True, alpha=0.3)


def _mark_flagged(ax, x, y, labelled: list[bool]) -> None:
    if len(x) == 0:
        return
    ax.plot(x, y, label=None if labelled[0] else "flagged run", **FLAG_STYLE)
    labelled[0] = True


def _legend_below(fig, ax) -> None:
    """One legend for the figure, under the panels, so it never covers a point or an interval."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=min(len(labels), 3), fontsize=8,
               frameon=False)  # fmt: skip


def _arm_series(summ: pd.DataFrame, arm: str) -> pd.DataFrame:
    return summ[summ["arm"] == arm].sort_values("concurrency")


def plot_throughput(df: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    sub = df[df["workload"] == workload]
    metrics = [("generation_throughput_tps", "generation throughput (tokens/s)"),
               ("prompt_throughput_tps", "prompt throughput (tokens/s)")]  # fmt: skip
    summ = aggregate.summary_frame(sub, [m for m, _ in metrics])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"wspace": 0.3})
    flagged_labelled = [False]
    for ax, (m, label) in zip(axes, metrics):
        for i, arm in enumerate(aggregate.arms_of(cfg)):
            s = _arm_series(summ, arm["name"])
            if s.empty:
                continue
            name = aggregate.arm_label(arm["name"], bool(s["flagged"].any()))
            ax.errorbar(s["concurrency"], s[f"{m}_mean"], yerr=s[f"{m}_std"].fillna(0), marker="o", capsize=3,
                        color=arm_color(i), label=name)  # fmt: skip
            f = s[s["flagged"]]
            _mark_flagged(ax, f["concurrency"], f[f"{m}_mean"], flagged_labelled)
        setup_concurrency_axis(ax, cfg["workloads"][workload]["concurrency"])
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    _legend_below(fig, axes[0])
    fig.suptitle(f"{cfg['experiment']} / {workload}: throughput vs concurrency (mean ± sd over repeats)")
    return save_figure(fig, out_dir, f"throughput_{workload}")


def plot_ttft(df: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    sub = df[df["workload"] == workload].copy()
    sub["ttft_s_median"] = sub["ttft_ms_median"] / 1000.0
    summ = aggregate.summary_frame(sub, ["min_ttft_s", "ttft_s_median", "max_ttft_s"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    flagged_labelled = [False]
    for i, arm in enumerate(aggregate.arms_of(cfg)):
        s = _arm_series(summ, arm["name"])
        if s.empty:
            continue
        color = arm_color(i)
        name = aggregate.arm_label(arm["name"], bool(s["flagged"].any()))
        x = s["concurrency"]
        ax.errorbar(x, s["ttft_s_median_mean"], yerr=s["ttft_s_median_std"].fillna(0), marker="o", capsize=3,
                    color=color, label=f"{name} median")  # fmt: skip
        ax.fill_between(x, s["min_ttft_s_mean"], s["max_ttft_s_mean"], color=color, alpha=0.15,
                        label=f"{name} min-max")  # fmt: skip
        ax.plot(x, s["min_ttft_s_mean"], color=color, linestyle=":", linewidth=1)
        ax.plot(x, s["max_ttft_s_mean"], color=color, linestyle="--", linewidth=1)
        f = s[s["flagged"]]
        _mark_flagged(ax, f["concurrency"], f["ttft_s_median_mean"], flagged_labelled)
    setup_concurrency_axis(ax, cfg["workloads"][workload]["concurrency"])
    ax.set_ylabel("TTFT (s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(f"{cfg['experiment']} / {workload}: TTFT min (dotted) / median / max (dashed)", fontsize=9)
    return save_figure(fig, out_dir, f"ttft_{workload}")


def plot_speedup(df: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    metrics = [("generation_throughput_tps", "generation throughput ratio"),
               ("prompt_throughput_tps", "prompt throughput ratio")]  # fmt: skip
    pairs = aggregate.comparison_pairs(cfg)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"wspace": 0.3})
    flagged_labelled = [False]
    concurrency = cfg["workloads"][workload]["concurrency"]
    n_pairs = max(len(pairs), 1)
    for ax, (m, label) in zip(axes, metrics):
        ax.axhline(1.0, color="grey", linewidth=1)
        for i, (arm, base) in enumerate(pairs):
            comps = aggregate.compare_arms(df, cfg, arm, base, m, workload)
            if not comps:
                continue
            # Pairs side by side around each concurrency so their intervals do not hide each other.
            shift = 2 ** ((i - (n_pairs - 1) / 2) * 0.06)
            x = [c.concurrency * shift for c in comps]
            y = [c.ratio for c in comps]
            lo = [c.ratio - c.interval[0] if c.interval else 0.0 for c in comps]
            hi = [c.interval[1] - c.ratio if c.interval else 0.0 for c in comps]
            flagged = any(c.flagged for c in comps)
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3,
                        label=aggregate.arm_label(f"{arm} / {base}", flagged))  # fmt: skip
            fx = [xx for xx, c in zip(x, comps) if c.flagged]
            fy = [yy for yy, c in zip(y, comps) if c.flagged]
            _mark_flagged(ax, fx, fy, flagged_labelled)
        setup_concurrency_axis(ax, concurrency)
        ax.set_ylabel(label)
    if axes[0].get_legend_handles_labels()[0]:
        _legend_below(fig, axes[0])
    else:
        why = "one arm only" if not pairs else "no level measured\nby both arms of a pair"
        for ax in axes:
            ax.text(0.5, 0.5, f"{why}:\nno speedup to show", transform=ax.transAxes, ha="center", va="center")
    fig.suptitle(f"{cfg['experiment']} / {workload}: arm / baseline with 95% bootstrap interval over repeats")
    return save_figure(fig, out_dir, f"speedup_{workload}")


def write_plots(exp_dir: Path, cfg: dict) -> list[Path]:
    exp_dir = Path(exp_dir)
    df = aggregate.read_levels_csv(exp_dir)
    out = exp_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context(RC):
        for workload in aggregate.workload_names(cfg):
            paths += plot_throughput(df, cfg, workload, out)
            paths += plot_ttft(df, cfg, workload, out)
            paths += plot_speedup(df, cfg, workload, out)
    return paths


def _cmd(args: argparse.Namespace) -> int:
    cfg = aggregate.load_cfg(args.config)
    for path in write_plots(Path(args.exp_dir), cfg):
        print(path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("plots", help="draw the plots of one experiment (PNG + SVG) from tables/levels.csv")
    p.add_argument("exp_dir", metavar="EXP_DIR", help="results/<experiment>")
    p.add_argument("--config", required=True, help="the experiment's config YAML")
    p.set_defaults(func=_cmd)
