"""reference.py: our numbers, our range over repeats, the GPUs they ran on and vLLM's client on our server, set
against a reference CSV; bad reference files are named."""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

import pytest

from attnbench.analysis import aggregate, reference, report, runinfo, tidy
from attnbench.errors import AttnbenchError

sys.path.insert(0, str(Path(__file__).parent))
import synth_runs  # noqa: E402


def _patch_run(rdir: Path, **fields) -> None:
    run = json.loads((rdir / "run.json").read_text())
    run.update(fields)
    (rdir / "run.json").write_text(json.dumps(run))


@pytest.fixture
def experiment(tmp_path):
    cfg = synth_runs.config(repeats=3)
    exp = tmp_path / "synth"
    synth_runs.write_experiment(exp, cfg, {"base": [1.0, 1.05, 1.1], "fast": [2.0, 2.0, 2.0]})
    gpu = {
        "gpu": "aaaaaaaaaaaa",
        "sm_clock_mhz_median": 1980.0,
        "sm_clock_max_mhz": 1980.0,
        "power_w_median": 460.0,
        "power_limit_w": 700.0,
        "temperature_c_max": 70.0,
        "clock_event_reasons": "0x4",
        "samples": 9,
        "busy_samples": 8,
        "mem_clock_mhz_median": 2619.0,
    }
    _patch_run(exp / "runs/base/rep0", gpu=gpu)
    _patch_run(
        exp / "runs/base/rep1",
        gpu={**gpu, "gpu": "bbbbbbbbbbbb"},
        crosscheck=[
            {
                "point": "short-c1",
                "prompt_tokens": {"vllm": 50.0, "ours": 50.0},
                "output_throughput_ratio": 124 / 123,
                "ttft_ms_median_diff": -1.0,
                "tpot_ms_median_diff": -0.1,
                "noise_ours_throughput_rel": 0.01,
                "noise_vllm_throughput_rel": 0.01,
                "repeats": 2,
                "workload": {"num_prompts": 8},
                "means": {
                    "vllm": {"output_throughput_tps": 123.0, "tpot_ms_median": 7.0, "ttft_ms_median": 50.0},
                    "ours": {"output_throughput_tps": 124.0, "tpot_ms_median": 6.9, "ttft_ms_median": 49.0},
                },
            }
        ],
    )
    aggregate.write_tables(exp, cfg)
    return exp, cfg


def write_ref(path: Path, rows: list[str], header: str = "arm,workload,concurrency,metric,value,note") -> Path:
    path.write_text("# a comment line\n" + header + "\n" + "\n".join(rows) + "\n")
    return path


def test_range_verdict_gpus_and_same_server_client(experiment, tmp_path):
    exp, cfg = experiment
    levels = tidy.read_levels_csv(exp)
    base = levels[(levels.arm == "base") & (levels.workload == "short") & (levels.concurrency == 1)]
    lo, hi = base.output_throughput_tps.min(), base.output_throughput_tps.max()
    assert hi > lo * 1.05  # the repeats do differ (speeds 1.0 .. 1.1)
    ref = write_ref(
        tmp_path / "ref.csv",
        [
            f"base,short,1,output_throughput_tps,{(lo + hi) / 2},inside",
            f"base,short,1,output_throughput_tps,{hi * 1.1},above",
            "fast,long,1,tpot_ms_median,1.0,",
        ],
    )
    rows = reference.compare(levels, runinfo.load_runs(exp, cfg), reference.read_reference(ref))
    inside, above, fast = rows
    assert inside.within and inside.outside_by == 0
    assert inside.ours_mean == pytest.approx(base.output_throughput_tps.mean())
    assert (inside.repeats, inside.gpus, inside.unsampled) == (3, 2, 1)  # rep2 has no GPU samples
    assert inside.vllm_same_server == 123.0  # from rep1's crosscheck at short-c1
    assert not above.within and above.outside_by == pytest.approx(0.1)
    assert fast.vllm_same_server is None and fast.ours_mean == pytest.approx(
        levels[(levels.arm == "fast") & (levels.workload == "long")].tpot_ms_median.mean()
    )
    md = reference.section(rows, "test ref", str(ref))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| base")]
    assert [c[:4] + c[9:11] for c in cells] == [
        ["base", "short", "1", "output_throughput_tps", "inside", "123.0"],
        ["base", "short", "1", "output_throughput_tps", "outside by +10.0%", "123.0"],
    ]
    assert "outside by +10.0%" in md and "inside" in md and "3 / 2 (+1 not sampled)" in md


def test_report_carries_the_section_and_gpu_telemetry(experiment, tmp_path):
    exp, cfg = experiment
    ref = write_ref(tmp_path / "ref.csv", ["base,short,1,output_throughput_tps,100.0,x"])
    cfg["analysis"] = {"reference": {"file": str(ref), "label": "colleague"}}
    md = report.build_report_md(exp, cfg)
    assert "## Against the reference: colleague" in md
    assert "| aaaaaaaaaaaa | 1980 / 1980" in md and "460 / 700" in md and "not sampled" in md
    xc = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.split("## Cross-check")[1].splitlines()
        if line.startswith("| base")
    ]
    assert xc[0][-3:] == ["8 x 2", "123.0 / 124.0", "7.000 / 6.900"]


@pytest.mark.parametrize(
    "rows,header,message",
    [
        (
            ["base,short,1,output_throughput_tps,1.0,x"],
            "arm,workload,concurrency,value",
            r"missing column\(s\) metric, note",
        ),
        (["base,short,1,tok_per_s,1.0,x"], None, r"'tok_per_s' is not a column of tables/levels.csv"),
    ],
)
def test_bad_reference_is_named(experiment, tmp_path, rows, header, message):
    exp, cfg = experiment
    ref = write_ref(tmp_path / "ref.csv", rows, **({"header": header} if header else {}))
    with pytest.raises(reference.ReferenceFileError, match=message):
        reference.compare(tidy.read_levels_csv(exp), runinfo.load_runs(exp, cfg), reference.read_reference(ref))


def test_missing_reference_file_is_named(tmp_path):
    with pytest.raises(reference.ReferenceFileError, match="does not exist"):
        reference.read_reference(tmp_path / "nope.csv")


def test_analysis_and_bundle_errors_are_the_projects_and_shadow_no_builtin():
    """One exception tree: every error class analysis/ and bundles/ define derives from AttnbenchError (the CLI
    prints those as one line) and none takes a builtin's name (ReferenceError did)."""
    import attnbench.analysis
    import attnbench.bundles

    defined = []
    for pkg in (attnbench.analysis, attnbench.bundles):
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            defined += [
                obj
                for obj in vars(module).values()
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
            ]
    assert reference.ReferenceFileError in defined and len(defined) >= 2
    for cls in defined:
        assert issubclass(cls, AttnbenchError) and not hasattr(builtins, cls.__name__), cls
