"""Plots of one experiment (PNG + SVG), drawn from the tables `aggregate` wrote (levels.csv, comparisons.csv,
vs_published.csv, kernel_shares.csv), so every figure shows the numbers of a table.

Per workload:
  throughput_<wl>  generation and prompt throughput vs concurrency per arm; error bars ± 1 sample sd over repeats
  ttft_<wl>        median TTFT (ms) vs concurrency per arm, ± 1 sd over repeats, and the min-to-max band
  speedup_<wl>     each compared pair's throughput ratio (comparisons.csv) with its 95% interval where the repeats
                   carry one (3 or more), hollow without; the article's ratio for the same claim beside it
  decode_<wl>      decode speed (concurrency x 1000 / median TPOT, tok/s) against the memory-bandwidth bound
Per experiment:
  kernels          kernel evidence: share of attention time by kernel family, prefill and decode, per arm
  vs_published     ours / the article's published number per level, generation and prompt throughput

One unit per quantity: TTFT and TPOT in ms, throughput in tokens/s. Throughput and latency axes are logarithmic
(levels span two orders of magnitude, and one wide interval would flatten the rest on a linear axis). A level with a
flagged run (kernels contradict the arm's expectation, or the run failed) carries a red cross and its arm "(!)" in
the legend; a level where a metric's definition breaks (metrics.ARTIFACTS) an orange ring. Legends sit below the
panels, so they never hide data. SVGs are byte-deterministic: a fixed `svg.hashsalt` and no date in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from attnbench import layout  # noqa: E402
from attnbench.analysis import aggregate, markdown, runinfo, stats, tabletext, tidy  # noqa: E402

PLOTS_DIR = "plots"
KINDS = ("throughput", "ttft", "speedup", "decode")  # one figure per workload
FIGURES = ("kernels", "vs_published")  # one figure per experiment
FORMATS = ("png", "svg")
RC = {"svg.hashsalt": "attnbench", "svg.fonttype": "none", "font.size": 9, "figure.dpi": 100}
FLAG_STYLE = dict(marker="x", color="red", markersize=11, markeredgewidth=2, linestyle="none", zorder=5)
ARTIFACT_STYLE = dict(
    marker="o",
    markerfacecolor="none",
    markeredgecolor="darkorange",
    markersize=13,
    markeredgewidth=1.5,
    linestyle="none",
    zorder=4,
)
SD_NOTE = "error bars: ± 1 sample sd over repeats (none with one repeat)"


def plot_names(cfg: dict) -> list[str]:
    """The file names `write_plots` produces for a config (Snakemake lists them as outputs)."""
    per_workload = [f"{kind}_{wl}" for wl in runinfo.workload_names(cfg) for kind in KINDS]
    return [f"{stem}.{ext}" for stem in per_workload + list(FIGURES) for ext in FORMATS]


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


LOG_SPAN = 3.0  # a y axis goes logarithmic when its values span more than this factor


def log_y(ax, values) -> None:
    """Logarithmic y, with plain numbers (1, 2, 5 x 10^k) as labels, where the positive values (interval ends
    included) span more than LOG_SPAN: there one wide interval or one fast level would flatten the rest. A narrow
    range stays linear, where a log axis would show no tick at all."""
    vals = [float(v) for v in values if pd.notna(v) and float(v) > 0]
    if not vals or max(vals) / min(vals) <= LOG_SPAN:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _no_data(ax, why: str) -> None:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


class Marks:
    """Adds the flag markers to an axis, each legend entry once per figure."""

    def __init__(self) -> None:
        self.labelled: set[str] = set()

    def _plot(self, ax, x, y, style: dict, label: str) -> None:
        if len(x) == 0:
            return
        ax.plot(x, y, label=None if label in self.labelled else label, **style)
        self.labelled.add(label)

    def flagged(self, ax, x, y) -> None:
        self._plot(ax, x, y, FLAG_STYLE, "flagged run")

    def artifact(self, ax, x, y) -> None:
        self._plot(ax, x, y, ARTIFACT_STYLE, "definition breaks (tables/flags.md)")

    def levels(self, ax, s: pd.DataFrame, metric: str, y_col: str) -> None:
        """Red crosses at levels with a flagged run, orange rings where the metric's definition breaks."""
        ok = s[y_col].notna() & (s[y_col] > 0)
        f = s[s["flagged"].astype(bool) & ok]
        self.flagged(ax, f["concurrency"], f[y_col])
        codes = s[f"{metric}_flags"].fillna("").map(lambda t: bool(set(t.split("+")) - {"run", ""}))
        a = s[codes & ok]
        self.artifact(ax, a["concurrency"], a[y_col])


def _legend_below(fig, axes) -> None:
    """One legend for the figure, under the panels, so it never covers a point or an interval."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=min(len(seen), 3),
            fontsize=8,
            frameon=False,
        )


def _arm_series(summ: pd.DataFrame, arm: str) -> pd.DataFrame:
    return summ[summ["arm"] == arm].sort_values("concurrency")


def _errorbar_sd(ax, s: pd.DataFrame, metric: str, **kw) -> None:
    ax.errorbar(s["concurrency"], s[f"{metric}_mean"], yerr=s[f"{metric}_std"].fillna(0), marker="o", capsize=3, **kw)


def plot_throughput(df: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    sub = df[df["workload"] == workload]
    panels = [
        ("generation_throughput_tps", "generation throughput (tokens/s)"),
        ("prompt_throughput_tps", "prompt throughput (tokens/s)"),
    ]
    summ = stats.summary_frame(sub, [m for m, _ in panels])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"wspace": 0.3})
    marks = Marks()
    for ax, (m, label) in zip(axes, panels):
        for i, arm in enumerate(runinfo.arms_of(cfg)):
            s = _arm_series(summ, arm["name"])
            if s.empty:
                continue
            _errorbar_sd(ax, s, m, color=arm_color(i), label=markdown.arm_label(arm["name"], bool(s["flagged"].any())))
            marks.levels(ax, s, m, f"{m}_mean")
        setup_concurrency_axis(ax, cfg["workloads"][workload]["concurrency"])
        log_y(ax, summ[f"{m}_mean"])
        ax.set_ylabel(label)
    _legend_below(fig, axes)
    fig.suptitle(f"{cfg['experiment']} / {workload}: throughput vs concurrency, mean over repeats ({SD_NOTE})")
    return save_figure(fig, out_dir, f"throughput_{workload}")


def plot_ttft(df: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    sub = df[df["workload"] == workload].copy()
    # The article's min/max TTFT columns are in seconds; here every TTFT is in ms like the rest of the analysis.
    sub["min_ttft_ms"] = sub["min_ttft_s"] * 1000.0
    sub["max_ttft_ms"] = sub["max_ttft_s"] * 1000.0
    summ = stats.summary_frame(sub, ["min_ttft_ms", "ttft_ms_median", "max_ttft_ms"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    marks = Marks()
    for i, arm in enumerate(runinfo.arms_of(cfg)):
        s = _arm_series(summ, arm["name"])
        if s.empty:
            continue
        color = arm_color(i)
        name = markdown.arm_label(arm["name"], bool(s["flagged"].any()))
        _errorbar_sd(ax, s, "ttft_ms_median", color=color, label=f"{name}: median")
        ax.fill_between(
            s["concurrency"],
            s["min_ttft_ms_mean"],
            s["max_ttft_ms_mean"],
            color=color,
            alpha=0.15,
            label=f"{name}: min to max",
        )
        marks.levels(ax, s, "ttft_ms_median", "ttft_ms_median_mean")
    setup_concurrency_axis(ax, cfg["workloads"][workload]["concurrency"])
    log_y(ax, pd.concat([summ["min_ttft_ms_mean"], summ["max_ttft_ms_mean"]]))
    ax.set_ylabel("TTFT (ms)")
    _legend_below(fig, [ax])
    ax.set_title(
        f"{cfg['experiment']} / {workload}: TTFT, mean over repeats of each level's median\n"
        f"(band: mean min to mean max; {SD_NOTE})",
        fontsize=9,
    )
    return save_figure(fig, out_dir, f"ttft_{workload}")


def plot_speedup(comp: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    panels = [
        ("generation_throughput_tps", "generation throughput ratio"),
        ("prompt_throughput_tps", "prompt throughput ratio"),
    ]
    pairs = stats.comparison_pairs(cfg)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"wspace": 0.3})
    marks = Marks()
    concurrency = cfg["workloads"][workload]["concurrency"]
    n_pairs = max(len(pairs), 1)
    drawn = False
    for ax, (m, label) in zip(axes, panels):
        ax.axhline(1.0, color="grey", linewidth=1)
        published_drawn: set[str] = set()
        for i, (arm, base) in enumerate(pairs):
            c = tabletext.comparison_rows(comp, arm, base, workload)
            c = c[(c["metric"] == m) & c["ratio"].notna() & (c["ratio"] > 0)].sort_values("concurrency")
            if c.empty:
                continue
            drawn = True
            # Pairs side by side around each concurrency so their intervals do not hide each other.
            shift = 2 ** ((i - (n_pairs - 1) / 2) * 0.06)
            x = c["concurrency"] * shift
            color = f"C{i % 10}"
            flagged = c["flags"].fillna("").str.split("+").map(lambda f: "run" in f)
            ax.plot(
                x,
                c["ratio"],
                color=color,
                linewidth=1,
                label=markdown.arm_label(f"{arm} / {base}", bool(flagged.any())),
            )
            has = c["ci_low"].notna()
            ax.errorbar(
                x[has],
                c["ratio"][has],
                yerr=[c["ratio"][has] - c["ci_low"][has], c["ci_high"][has] - c["ratio"][has]],
                color=color,
                marker="o",
                capsize=3,
                linestyle="none",
            )
            ax.plot(
                x[~has],
                c["ratio"][~has],
                color=color,
                marker="o",
                markerfacecolor="white",
                linestyle="none",
                label="ratio without interval (< 3 repeats)" if (~has).any() else None,
            )
            marks.flagged(ax, x[flagged], c["ratio"][flagged])
            broken = c["flags"].fillna("").map(lambda f: bool(set(f.split("+")) - {"run", ""}))
            marks.artifact(ax, x[broken], c["ratio"][broken])
            pub = c[c["published_ratio"].notna()]
            pair = pub["published_pair"].iloc[0] if not pub.empty else ""
            if pair and pair not in published_drawn:  # one line per published claim, whichever pairs share it
                published_drawn.add(pair)
                ax.plot(
                    pub["concurrency"],
                    pub["published_ratio"],
                    color="black",
                    marker="D",
                    markersize=4,
                    linestyle="--",
                    linewidth=1,
                    label=f"article: {pair}",
                )
        setup_concurrency_axis(ax, concurrency)
        sel = comp[(comp["workload"] == workload) & (comp["metric"] == m)]
        log_y(ax, pd.concat([sel["ratio"], sel["ci_low"], sel["ci_high"], sel["published_ratio"]]))
        ax.set_ylabel(label + (" (log scale)" if ax.get_yscale() == "log" else ""))
    if drawn:
        _legend_below(fig, axes)
    else:
        why = "one arm only" if not pairs else "no level measured\nby both arms of a pair"
        for ax in axes:
            _no_data(ax, f"{why}:\nno ratio to show")
    fig.suptitle(
        f"{cfg['experiment']} / {workload}: mean(arm) / mean(baseline); error bars: "
        f"{stats.INTERVAL_METHOD.split(' (')[0]}, only from {stats.MIN_REPEATS_FOR_INTERVAL} "
        "repeats on",
        fontsize=9,
    )
    return save_figure(fig, out_dir, f"speedup_{workload}")


def plot_decode(df: pd.DataFrame, cfg: dict, workload: str, out_dir: Path) -> list[Path]:
    """Decode speed N x 1000 / median TPOT against the bound N x 1000 / (weights / bandwidth): each decode step of
    N sequences reads the weights once, so memory bandwidth caps it (KV-cache reads, ignored here, lower it)."""
    sub = df[df["workload"] == workload].copy()
    sub["decode_tps"] = sub["concurrency"] * 1000.0 / sub["tpot_ms_median"]
    summ = stats.summary_frame(sub, ["decode_tps"])
    summ["decode_tps_flags"] = stats.summary_frame(sub, ["tpot_ms_median"])["tpot_ms_median_flags"]
    bound = tidy.decode_bound_ms(cfg)
    fig, axes = plt.subplots(
        1, 2 if bound else 1, figsize=(10 if bound else 6.5, 4.2), squeeze=False, gridspec_kw={"wspace": 0.3}
    )
    ax = axes[0][0]
    marks = Marks()
    concurrency = cfg["workloads"][workload]["concurrency"]
    for i, arm in enumerate(runinfo.arms_of(cfg)):
        s = _arm_series(summ, arm["name"])
        if s.empty:
            continue
        label = markdown.arm_label(arm["name"], bool(s["flagged"].any()))
        _errorbar_sd(ax, s, "decode_tps", color=arm_color(i), label=label)
        marks.levels(ax, s, "decode_tps", "decode_tps_mean")
        if bound:  # the same points as a share of the bound, where arms a few percent apart separate
            pct = s.assign(
                pct_mean=s["decode_tps_mean"] * bound / s["concurrency"] / 10.0,
                pct_std=s["decode_tps_std"] * bound / s["concurrency"] / 10.0,
            )
            _errorbar_sd(axes[0][1], pct, "pct", color=arm_color(i), label=label)
    if bound is not None:
        ax.plot(
            concurrency,
            [c * 1000.0 / bound for c in concurrency],
            color="black",
            linestyle="--",
            label=f"memory-bandwidth bound ({bound:.2f} ms per step)",
        )
        note = "dashed: weights / bandwidth per decode step"
        right = axes[0][1]
        setup_concurrency_axis(right, concurrency)
        right.set_ylim(0, 100)
        right.set_ylabel("decode speed, % of the bound")
    else:
        note = "no bound: set analysis.weights_gb and analysis.bandwidth_tb_s"
    setup_concurrency_axis(ax, concurrency)
    log_y(ax, summ["decode_tps_mean"])
    ax.set_ylabel("concurrency x 1000 / median TPOT (tokens/s)")
    _legend_below(fig, axes[0])
    fig.suptitle(f"{cfg['experiment']} / {workload}: decode speed, mean over repeats ({note};\n{SD_NOTE})", fontsize=9)
    return save_figure(fig, out_dir, f"decode_{workload}")


def plot_kernels(shares: pd.DataFrame, cfg: dict, out_dir: Path) -> list[Path]:
    """Kernel evidence: per arm, the share of attention time each kernel family took in prefill and in decode,
    mean over the arm's probed runs (kernels.json); the family colours are fixed by kernels.FAMILIES' order."""
    from attnbench.engines.kernels import FAMILIES

    families = list(FAMILIES) + sorted(set(shares["family"]) - set(FAMILIES))
    colors = {f: f"C{i % 10}" for i, f in enumerate(families)}
    arms = [a["name"] for a in runinfo.arms_of(cfg)]
    phases = [p for p in tabletext.KERNEL_PHASES if (shares["phase"] == p).any()] or ["all"]
    if not (shares["phase"].isin(phases)).any():
        phases = ["all"]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 0.6 * len(arms) + 1.8), squeeze=False)
    axes = axes[0]
    if shares.empty:
        _no_data(axes[0], "no kernel attribution: the experiment ran no profiler probe\n(kernels.probe: false)")
    for ax, phase in zip(axes, phases if not shares.empty else []):
        at = shares[shares["phase"] == phase]
        for y, arm in enumerate(arms):
            runs = at[at["arm"] == arm]
            n_runs = runs["repeat"].nunique()
            left = 0.0
            if n_runs == 0:
                ax.text(0.01, y, "no probe / no attention kernels", va="center", fontsize=8, color="grey")
                continue
            # mean share over the arm's runs; a run where a family did not run counts 0 for it
            mean = runs.groupby("family")["attention_share"].sum() / n_runs
            for family in [f for f in families if f in mean.index]:
                w = float(mean[family])
                ax.barh(y, w, left=left, color=colors[family], label=family, edgecolor="white")
                if w >= 0.08:
                    ax.text(
                        left + w / 2,
                        y,
                        f"{family}\n{100 * w:.0f}%",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white",
                    )
                left += w
            ax.text(1.01, y, f"{n_runs} run{'s' if n_runs != 1 else ''}", va="center", fontsize=7)
        ax.set_yticks(range(len(arms)))
        ax.set_yticklabels(arms)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        ax.set_xlabel(f"share of {phase} attention time")
        ax.set_title(phase)
    _legend_below(fig, axes)
    basis = "GPU kernel time" if cfg["engine"].get("device", "cuda") == "cuda" else "kernel / op time"
    fig.suptitle(f"{cfg['experiment']}: which attention kernels ran (profiler probe, {basis}; mean over runs)")
    fig.tight_layout()
    return save_figure(fig, out_dir, "kernels")


def plot_vs_published(vp: pd.DataFrame, cfg: dict, out_dir: Path) -> list[Path]:
    """Ours / the article's number per level (1 = reproduced), generation (solid) and prompt (dashed) throughput,
    one panel per workload. Error bars: ± 1 sd of our repeats over the published value (the article gives one run)."""
    workloads = runinfo.workload_names(cfg)
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    axes = axes[0]
    arms = {a["name"]: i for i, a in enumerate(runinfo.arms_of(cfg))}
    if vp.empty:
        for ax in axes:
            _no_data(ax, "no arm with a published counterpart\n(arms[].article_backend)")
    for ax, workload in zip(axes, workloads if not vp.empty else []):
        ax.axhline(1.0, color="grey", linewidth=1)
        at = vp[vp["workload"] == workload]
        for arm, g in at.groupby("arm", sort=False):
            g = g.sort_values("concurrency")
            for metric, style, word in (
                ("generation_throughput_tps", "-", "generation"),
                ("prompt_throughput_tps", "--", "prompt"),
            ):
                ratio = g[f"{metric}_ratio"]
                ok = ratio.notna() & (ratio > 0)
                ax.plot(
                    g["concurrency"][ok],
                    ratio[ok],
                    linestyle=style,
                    marker="o",
                    color=arm_color(arms[arm]),
                    label=f"{markdown.arm_label(arm, bool(g['flagged'].any()))} ({g['article_backend'].iloc[0]}):"
                    f" {word}",
                )
        if not at.empty:
            setup_concurrency_axis(ax, sorted(set(at["concurrency"])))
            log_y(ax, pd.concat([at["generation_throughput_tps_ratio"], at["prompt_throughput_tps_ratio"]]))
        ax.set_ylabel("ours / published" + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title(workload)
    _legend_below(fig, axes)
    fig.suptitle(
        f"{cfg['experiment']} vs the article (vLLM 0.7.1, RTX 3070 Laptop): our mean over repeats / "
        "published, 1 = reproduced"
    )
    return save_figure(fig, out_dir, "vs_published")


def _read_table(exp_dir: Path, name: str) -> pd.DataFrame:
    path = layout.tables_dir(exp_dir) / name
    if not path.exists():
        raise runinfo.AggregateError(f"{path} is missing: run `attnbench aggregate {exp_dir} --config CFG` first")
    return pd.read_csv(path, dtype={"flags": str, "published_pair": str}, keep_default_na=True)


def write_plots(exp_dir: Path, cfg: dict) -> list[Path]:
    exp_dir = Path(exp_dir)
    df = tidy.read_levels_csv(exp_dir)
    comp = aggregate.read_comparisons(exp_dir)
    vp = _read_table(exp_dir, "vs_published.csv")
    shares = _read_table(exp_dir, "kernel_shares.csv")
    out = exp_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context(RC):
        for workload in runinfo.workload_names(cfg):
            paths += plot_throughput(df, cfg, workload, out)
            paths += plot_ttft(df, cfg, workload, out)
            paths += plot_speedup(comp, cfg, workload, out)
            paths += plot_decode(df, cfg, workload, out)
        paths += plot_kernels(shares, cfg, out)
        paths += plot_vs_published(vp, cfg, out)
    return paths


def register(subparsers) -> None:
    about = "draw the plots of one experiment (PNG + SVG) from its tables/"
    aggregate.experiment_parser(subparsers, "plots", about).set_defaults(func=aggregate.print_written(write_plots))
