"""Our numbers against a reference measured elsewhere (`analysis.reference`): e.g. the anchor file of vLLM's own
client on another H100, or a colleague's table.

A reference CSV has one value per row: `arm, workload, concurrency, metric, value, note`, where metric is a column
of tables/levels.csv (output_throughput_tps, tpot_ms_median, ttft_ms_median, ttft_ms_mean, ...). For each row the
report shows our mean over repeats, the range our repeats span (the noise this run measures, hosts included when
repeats ran on different machines), and, where a crosscheck point matches, what vLLM's own client measured on our
server: a reference outside our range, with vLLM's client agreeing with ours, points at the machine, not the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnbench.analysis import markdown, runinfo, tidy
from attnbench.errors import AttnbenchError
from attnbench.measure.crosscheck import MEAN_KEYS

COLUMNS = ["arm", "workload", "concurrency", "metric", "value", "note"]


class ReferenceFileError(AttnbenchError):
    """The config's analysis.reference file is missing, lacks a column, or names a metric the tables do not have."""


@dataclass
class Row:
    arm: str
    workload: str
    concurrency: int
    metric: str
    reference: float
    ours_mean: float | None
    ours_min: float | None
    ours_max: float | None
    repeats: int
    gpus: int  # distinct GPUs (run.json gpu.gpu) among those repeats
    unsampled: int  # repeats whose run has no GPU samples (CPU engine, runs before gpumon): GPU unknown
    vllm_same_server: float | None  # vLLM's client on our server (crosscheck means, over the runs that had it)
    note: str

    @property
    def within(self) -> bool | None:
        if self.ours_min is None:
            return None
        return self.ours_min <= self.reference <= self.ours_max

    @property
    def outside_by(self) -> float | None:
        """Relative distance from our range to the reference (0 inside it)."""
        if self.ours_min is None:
            return None
        edge = min(max(self.reference, self.ours_min), self.ours_max)
        return (self.reference - edge) / edge


def read_reference(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ReferenceFileError(f"analysis.reference.file: {path} does not exist")
    ref = pd.read_csv(path, comment="#")
    missing = [c for c in COLUMNS if c not in ref.columns]
    if missing:
        raise ReferenceFileError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    return ref


def compare(levels: pd.DataFrame, runs: list[runinfo.RunInfo], ref: pd.DataFrame) -> list[Row]:
    gpu_of = {(r.arm, r.repeat): (r.run.get("gpu") or {}).get("gpu") for r in runs}
    rows = []
    for item in ref.itertuples(index=False):
        if item.metric not in levels.columns:
            raise ReferenceFileError(f"reference metric {item.metric!r} is not a column of tables/levels.csv")
        sel = levels[
            (levels["arm"] == item.arm)
            & (levels["workload"] == item.workload)
            & (levels["concurrency"] == int(item.concurrency))
            & (levels["run_status"] == "ok")
        ]
        values = sel[item.metric].dropna()
        gpu_ids = [gpu_of.get((item.arm, int(rep))) for rep in sel["repeat"]]
        rows.append(
            Row(
                arm=item.arm,
                workload=item.workload,
                concurrency=int(item.concurrency),
                metric=item.metric,
                reference=float(item.value),
                ours_mean=float(values.mean()) if len(values) else None,
                ours_min=float(values.min()) if len(values) else None,
                ours_max=float(values.max()) if len(values) else None,
                repeats=len(values),
                gpus=len(set(gpu_ids) - {None}),
                unsampled=gpu_ids.count(None),
                vllm_same_server=_crosscheck_vllm(
                    runs, item.arm, f"{item.workload}-c{int(item.concurrency)}", item.metric
                ),
                note="" if pd.isna(item.note) else str(item.note),
            )
        )
    return rows


def _crosscheck_vllm(runs: list[runinfo.RunInfo], arm: str, point: str, metric: str) -> float | None:
    if metric not in MEAN_KEYS:  # the crosscheck keeps these figures, under the same names as levels.csv
        return None
    values = [
        xc["means"]["vllm"][metric]
        for r in runs
        if r.arm == arm
        for xc in r.run.get("crosscheck") or []
        if xc.get("point") == point and "means" in xc
    ]
    return sum(values) / len(values) if values else None


def section(rows: list[Row], label: str, source: str) -> str:
    def f(x: float | None, digits: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    table = []
    for r in rows:
        digits = 3 if r.metric.startswith("tpot") else 1
        verdict = "n/a" if r.within is None else "inside" if r.within else f"outside by {r.outside_by * 100:+.1f}%"
        table.append(
            [
                r.arm,
                r.workload,
                str(r.concurrency),
                r.metric,
                f(r.reference, digits),
                f(r.ours_mean, digits),
                f"{f(r.ours_min, digits)} - {f(r.ours_max, digits)}",
                f"{r.repeats} / {r.gpus}" + (f" (+{r.unsampled} not sampled)" if r.unsampled else ""),
                "n/a" if r.ours_mean is None else f"{r.ours_mean / r.reference:.3f}",
                verdict,
                f(r.vllm_same_server, digits),
                r.note,
            ]
        )
    return (
        f"## Against the reference: {label}\n\nReference: `{source}`. Ours = mean over repeats; the range is what "
        "our repeats span (the noise this run measures; repeats on different GPUs include the machine-to-machine "
        "spread). 'vLLM client, our server' is vLLM's own benchmark on this arm's server in the crosscheck (mean "
        "over its repetitions and runs): when it agrees with ours and both differ from the reference, the "
        "difference is the machine, not the client.\n\n"
        + markdown.md_table(
            [
                "Arm",
                "Workload",
                "Concurrency",
                "Metric",
                "Reference",
                "Ours",
                "Our range",
                "Repeats / GPUs",
                "Ours / reference",
                "Reference vs our range",
                "vLLM client, our server",
                "Note",
            ],
            table,
            right={2, 4, 5, 8, 10},
        )
    )


def reference_section(exp_dir: Path, cfg: dict, runs: list[runinfo.RunInfo]) -> str:
    """The report section, or '' when the config names no reference."""
    spec = (cfg.get("analysis") or {}).get("reference")
    if not spec:
        return ""
    rows = compare(tidy.read_levels_csv(exp_dir), runs, read_reference(spec["file"]))
    return section(rows, spec.get("label") or Path(spec["file"]).stem, spec["file"])
