"""`attnbench compare A B ... [--reference article] --out DIR`: put bundles from peers (and the article) side by side.

Each bundle is verified first (a bundle that fails is refused unless --allow-unverified, and is then marked so in the
report). Its tidy per-repeat table (tables/levels.csv, which verify has just recomputed from the raw records) is the
only input. Rows are keyed by GPU type, source, arm, workload and concurrency, so bundles from different GPUs merge
into one report. The first bundle is the base: every other source, and the reference, is divided by it where the
same workload and concurrency were measured, with the interval and verdict of the experiment's own tables
(stats.log_ratio_interval, stats.verdict: no interval below 3 repeats; a published number counts as exact), which say
whether a difference exceeds the run-to-run noise.

Writes to DIR: comparison.md (the report), sources.csv, side_by_side.csv, ratios.csv, plots/*.png|svg.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attnbench.analysis import compare_plots, markdown, stats, tabletext, tidy
from attnbench.errors import BundleError

ARTICLE_METRICS = [c for c, _, _ in tabletext.ARTICLE_COLUMNS]
MODERN_METRICS = [
    "output_throughput_tps",
    "request_throughput_rps",
    "ttft_ms_median",
    "tpot_ms_median",
    "itl_ms_median",
    "e2el_ms_median",
    "ttft_ms_p99",
    "success_rate",
]
# The article ran on one GPU; its key in the GPU-type scheme of provenance/gpu.py.
ARTICLE_GPU_TYPE = "rtx3070-laptop-sm86-8g"
REFERENCES = {"article": stats.PUBLISHED_CSV}
KEY = ["gpu_type", "source", "arm", "workload", "concurrency"]


@dataclass
class Source:
    """One column group of the comparison: a verified bundle or a published reference."""

    label: str
    gpu_type: str
    experiment: str
    origin: str  # the bundle path or reference CSV
    levels: pd.DataFrame  # one row per (arm, repeat, workload, concurrency)
    status: str  # "PASS", "FAIL (n problems)" or "reference"
    engine: str = ""
    backends: dict[str, str] = field(default_factory=dict)  # arm -> requested backend
    article_backends: dict[str, str] = field(default_factory=dict)  # arm -> the article backend it stands for
    complete: bool = True
    signed: str = "-"  # who signed it (principal or key fingerprint), "UNSIGNED", or "-" for a reference

    @property
    def is_reference(self) -> bool:
        return self.status == "reference"


# --- loading ----------------------------------------------------------------------------------------------------


def load_bundle(path: Path, *, allow_unverified: bool = False, allowed_signers: Path | None = None) -> Source:
    from attnbench.bundles.verify import verify_bundle

    with tempfile.TemporaryDirectory(prefix="attnbench-compare-") as tmp:
        root = Path(tmp) / "bundle"
        result = verify_bundle(path, workdir=root, allowed_signers=allowed_signers)
        if not result.ok and not allow_unverified:
            raise BundleError(
                f"{path}: does not verify ({len(result.findings)} problem(s), first: "
                f"{result.findings[0]}); run `attnbench verify {path}` or pass --allow-unverified"
            )
        if result.manifest is None:
            raise BundleError(f"{path}: unsafe archive, nothing extracted ({result.findings[0]})")
        levels = tidy.read_levels_csv(root)
    m = result.manifest
    cfg_arms = m["config"].get("arms", [])
    versions = (m.get("engine") or {}).get("versions") or {}
    return Source(
        label=Path(path).name.removesuffix(".tar.gz"),
        gpu_type=m["gpu_type"],
        experiment=m["experiment"],
        origin=str(path),
        levels=levels,
        status="PASS" if result.ok else f"FAIL ({len(result.findings)} problems)",
        engine=f"vLLM {versions.get('vllm') or m['config'].get('engine', {}).get('version', '?')}",
        backends={a["name"]: a.get("backend") or "default" for a in cfg_arms},
        article_backends={a["name"]: a["article_backend"] for a in cfg_arms if a.get("article_backend")},
        complete=bool(m.get("complete")),
        signed=_signed_label(result.signature),
    )


def _signed_label(sig) -> str:
    if sig is None or sig.state == "unsigned":
        return "UNSIGNED"
    return sig.label() if sig.state == "good" else "BAD SIGNATURE"


def load_reference(name_or_path: str) -> Source:
    """The article's published numbers (or a CSV in the same format) as a source with one 'repeat' per level."""
    path = REFERENCES.get(name_or_path, Path(name_or_path))
    # "article": read_published looks in the checkout, the working directory and the installed package's data
    pub = stats.read_published(None if name_or_path in REFERENCES else Path(path))
    needed = {"backend", "workload", "concurrency"}
    if not needed <= set(pub.columns):
        raise BundleError(f"{path}: reference table needs columns {sorted(needed)}, has {list(pub.columns)}")
    levels = pub.rename(columns={"backend": "arm"}).assign(repeat=0)
    backends = {b: b for b in levels["arm"].unique()}
    return Source(
        label=name_or_path if name_or_path in REFERENCES else Path(path).stem,
        gpu_type=ARTICLE_GPU_TYPE if name_or_path == "article" else "reference",
        experiment="published",
        origin=str(path),
        levels=levels,
        status="reference",
        engine="vLLM 0.7.1" if name_or_path == "article" else "",
        backends=backends,
        article_backends=backends,
    )


def expand_inputs(paths: list[str]) -> list[Path]:
    """Bundle files, or folders of them (bundles received from peers), in a stable order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.tar.gz"))
            if not found:
                raise BundleError(f"{p}: folder holds no *.tar.gz bundle")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise BundleError(f"{p}: no such bundle file or folder")
    return out


def unique_labels(sources: list[Source]) -> None:
    seen: dict[str, int] = {}
    for s in sources:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label}#{seen[s.label]}"


# --- tables -----------------------------------------------------------------------------------------------------


def metrics_of(sources: list[Source]) -> list[str]:
    """Article metrics first, then the modern ones any bundle has."""
    present = set().union(*(set(s.levels.columns) for s in sources))
    return [m for m in ARTICLE_METRICS + MODERN_METRICS if m in present]


def side_by_side(sources: list[Source], metrics: list[str]) -> pd.DataFrame:
    """Tidy: one row per (gpu_type, source, arm, workload, concurrency, metric) with mean, std, n over repeats."""
    rows = []
    for s in sources:
        for (arm, workload, conc), g in s.levels.groupby(["arm", "workload", "concurrency"], sort=True):
            for m in metrics:
                if m not in g:
                    continue
                spread = stats.Spread.of(g[m])
                if not spread.n:
                    continue
                rows.append(
                    {
                        "gpu_type": s.gpu_type,
                        "source": s.label,
                        "arm": arm,
                        "backend": s.backends.get(arm, ""),
                        "workload": workload,
                        "concurrency": int(conc),
                        "metric": m,
                        "mean": spread.mean,
                        "std": spread.sd,
                        "n": spread.n,
                        "spread": spread,
                    }
                )
    return pd.DataFrame(rows, columns=KEY[:3] + ["backend"] + KEY[3:] + ["metric", "mean", "std", "n", "spread"])


def pairs(base: Source, other: Source) -> list[tuple[str, str]]:
    """Which arm of `other` is compared with which arm of `base`: the same arm name where both have it; against
    the article, by the backend the arm stands for; otherwise (e.g. different GPUs with different arms) all pairs."""
    b_arms, o_arms = list(dict.fromkeys(base.levels["arm"])), list(dict.fromkeys(other.levels["arm"]))
    if base.is_reference or other.is_reference:
        bundle_side, ref_side = (other, base) if base.is_reference else (base, other)
        out = []
        for arm in dict.fromkeys(bundle_side.levels["arm"]):
            wanted = bundle_side.article_backends.get(arm)
            refs = [wanted] if wanted in set(ref_side.levels["arm"]) else list(dict.fromkeys(ref_side.levels["arm"]))
            out += [(arm, r) if other is bundle_side else (r, arm) for r in refs]
        return out
    same = [a for a in o_arms if a in b_arms]
    return [(a, a) for a in same] if same else [(o, b) for o in o_arms for b in b_arms]


def ratio_rows(sbs: pd.DataFrame, base: Source, other: Source, metrics: list[str]) -> list[dict]:
    rows = []
    index = {(r.source, r.arm, r.workload, r.concurrency, r.metric): r for r in sbs.itertuples(index=False)}
    for o_arm, b_arm in pairs(base, other):
        keys = sorted({(w, c) for (src, arm, w, c, _m) in index if src == other.label and arm == o_arm})
        for workload, conc in keys:
            for m in metrics:
                o = index.get((other.label, o_arm, workload, conc, m))
                b = index.get((base.label, b_arm, workload, conc, m))
                if o is None or b is None or not b.mean:
                    continue
                # A published number is one run without spread: exact, so only our repeats make the interval.
                o_s = stats.Spread.quoted(o.mean) if other.is_reference else o.spread
                b_s = stats.Spread.quoted(b.mean) if base.is_reference else b.spread
                interval = stats.log_ratio_interval(o_s, b_s)
                ratio = o.mean / b.mean
                rows.append(
                    {
                        "gpu_type": other.gpu_type,
                        "source": other.label,
                        "arm": o_arm,
                        "base_gpu_type": base.gpu_type,
                        "base_source": base.label,
                        "base_arm": b_arm,
                        "workload": workload,
                        "concurrency": int(conc),
                        "metric": m,
                        "value": o.mean,
                        "base_value": b.mean,
                        "n": o.n,
                        "base_n": b.n,
                        "ratio": ratio,
                        "ci_low": interval[0] if interval else None,
                        "ci_high": interval[1] if interval else None,
                        "verdict": stats.verdict(o_s, b_s, interval),
                    }
                )
    return rows


def ratios(sources: list[Source], sbs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Every source against the first bundle; a reference is also compared with every bundle (ours / published)."""
    base, rows = sources[0], []
    for other in sources[1:]:
        if other.is_reference:
            for s in [x for x in sources if not x.is_reference]:
                rows += ratio_rows(sbs, other, s, metrics)
        else:
            rows += ratio_rows(sbs, base, other, metrics)
    columns = [
        "gpu_type",
        "source",
        "arm",
        "base_gpu_type",
        "base_source",
        "base_arm",
        "workload",
        "concurrency",
        "metric",
        "value",
        "base_value",
        "n",
        "base_n",
        "ratio",
        "ci_low",
        "ci_high",
        "verdict",
    ]
    return pd.DataFrame(rows, columns=columns)


# --- report -----------------------------------------------------------------------------------------------------


def _num(v, d: int = 2) -> str:
    return markdown.fmt(None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v), d)


def sources_table(sources: list[Source]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "source": s.label,
                "gpu_type": s.gpu_type,
                "experiment": s.experiment,
                "engine": s.engine,
                "arms": " ".join(f"{a}={b}" for a, b in s.backends.items()),
                "repeats": int(s.levels["repeat"].nunique()),
                "complete": s.complete,
                "verify": s.status,
                "signed": s.signed,
                "origin": s.origin,
            }
            for s in sources
        ]
    )


def report_md(sources: list[Source], sbs: pd.DataFrame, rat: pd.DataFrame, plots: list[Path]) -> str:
    st = sources_table(sources)
    parts = [
        "# Comparison of result bundles\n\n",
        "Sources (the first bundle is the base of every ratio; verify: PASS means checksums, recomputed tables "
        "and consistency checks all passed; signed: the signer's principal or key fingerprint, UNSIGNED when "
        "anyone could have written the bundle):\n",
        markdown.md_table(list(st.columns), [[str(v) for v in r] for r in st.itertuples(index=False)], set()),
    ]
    column = {(s.label, a): f"{s.gpu_type} {a}" for s in sources for a in s.levels["arm"].unique()}
    if len(set(column.values())) < len(column):  # two sources of one GPU type: say which is which
        column = {k: f"{v} [{k[0]}]" for k, v in column.items()}
    parts.append("\n## Side by side (mean over repeats, ± sample std)\n")
    for workload in dict.fromkeys(sbs["workload"]):
        for metric in dict.fromkeys(sbs["metric"]):
            sub = sbs[(sbs["workload"] == workload) & (sbs["metric"] == metric)]
            if sub.empty:
                continue
            cols = list(dict.fromkeys(zip(sub["source"], sub["arm"])))
            rows = []
            for conc in sorted(sub["concurrency"].unique()):
                cells = [str(conc)]
                for src, arm in cols:
                    hit = sub[(sub["source"] == src) & (sub["arm"] == arm) & (sub["concurrency"] == conc)]
                    if hit.empty:
                        cells.append("")
                    else:
                        r = hit.iloc[0]
                        cells.append(_num(r["mean"]) + (f" ± {_num(r['std'])}" if pd.notna(r["std"]) else ""))
                rows.append(cells)
            parts.append(f"\n### {workload} / {metric}\n")
            parts.append(markdown.md_table(["Concurrency"] + [column[c] for c in cols], rows))
    parts.append(
        f"\n## Ratios (source / base)\n\nInterval: {stats.INTERVAL_METHOD}; a published number counts as exact.\n"
    )
    if rat.empty:
        parts.append("\nNo level (workload, concurrency) was measured by both a source and the base.\n")
    for (src, arm, bsrc, barm), g in rat.groupby(["source", "arm", "base_source", "base_arm"], sort=False):
        parts.append(f"\n### {src} {arm} vs {bsrc} {barm}\n")
        rows = [
            [
                r.workload,
                str(r.concurrency),
                r.metric,
                _num(r.value),
                _num(r.base_value),
                _num(r.ratio, 3),
                "" if pd.isna(r.ci_low) else f"[{_num(r.ci_low, 3)}, {_num(r.ci_high, 3)}]",
                r.verdict,
            ]
            for r in g.itertuples(index=False)
        ]
        parts.append(
            markdown.md_table(
                ["Workload", "Concurrency", "Metric", src, bsrc, "ratio", "95% CI", "verdict"],
                rows,
                right={1, 3, 4, 5, 6},
            )
        )
    if plots:
        parts.append("\n## Plots\n")
        parts += [f"\n![{p.stem}](plots/{p.name})\n" for p in plots if p.suffix == ".png"]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


# --- entry points -----------------------------------------------------------------------------------------------


def compare(
    bundles: list[Path],
    out_dir: Path,
    *,
    reference: str | None = None,
    allow_unverified: bool = False,
    allowed_signers: Path | None = None,
) -> list[Path]:
    """Write the comparison of `bundles` (and the reference) into out_dir; returns the files written."""
    if not bundles and not reference:
        raise BundleError("compare needs at least one bundle")
    sources = [load_bundle(p, allow_unverified=allow_unverified, allowed_signers=allowed_signers) for p in bundles]
    if reference:
        sources.append(load_reference(reference))
    if len(sources) < 2:
        raise BundleError("compare needs two sources: two bundles, or a bundle and --reference")
    unique_labels(sources)
    metrics = metrics_of(sources)
    sbs = side_by_side(sources, metrics)
    rat = ratios(sources, sbs, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = compare_plots.write_plots(sbs, rat, out_dir / "plots", {s.label for s in sources if s.is_reference})
    written = []
    for name, frame in (
        ("sources.csv", sources_table(sources)),
        ("side_by_side.csv", sbs.drop(columns="spread")),
        ("ratios.csv", rat),
    ):
        path = out_dir / name
        frame.to_csv(path, index=False, float_format=tidy.FLOAT_FORMAT, lineterminator="\n")
        written.append(path)
    report = out_dir / "comparison.md"
    report.write_text(report_md(sources, sbs, rat, plots), encoding="utf-8")
    return [report, *written, *plots]


def _cmd(args: argparse.Namespace) -> int:
    written = compare(
        expand_inputs(args.bundles),
        Path(args.out),
        reference=args.reference,
        allow_unverified=args.allow_unverified,
        allowed_signers=Path(args.allowed_signers) if args.allowed_signers else None,
    )
    print(f"wrote {written[0]} and {len(written) - 1} more file(s) in {Path(args.out)}")
    return 0


def register(subparsers) -> None:
    about = "compare result bundles (any GPU types) with each other and the article's published numbers"
    p = subparsers.add_parser("compare", help=about, description=f"{about[0].upper()}{about[1:]}.")
    p.add_argument(
        "bundles",
        nargs="*",
        metavar="BUNDLE",
        help="bundle files, or folders of received bundles; the first is the base",
    )
    p.add_argument("--reference", help="'article' (config/reference/article_published.csv) or a CSV in that format")
    p.add_argument("--out", required=True, help="output folder for comparison.md, CSVs and plots")
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="include bundles that fail verification (marked FAIL in the report)",
    )
    p.add_argument(
        "--allowed-signers",
        help="ssh-keygen allowed-signers file; unsigned bundles and bundles signed by other keys fail "
        "verification (without it, unsigned ones are marked UNSIGNED)",
    )
    p.set_defaults(func=_cmd)
