"""containers.smk through Snakemake itself, dry runs only: `--use-singularity -n` plans one base image per engine
line and a layer per (arm, GPU type); an impossible engine/GPU pair and a missing apptainer stop the workflow at
parse time, together, in one message.

Snakemake insists on an apptainer binary even for a dry run, so the planning tests put tests/fakes/apptainer (a TEST
STAND-IN that only answers --version and records arguments) first on PATH. Real builds and runs with the real
Apptainer are in tests/integration/test_apptainer.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"
H100 = "h100-80gb-hbm3-sm90-80g"
EXPERIMENT = "pytest-containers"


def snakemake(*args, log: Path | None = None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{FAKES}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if log:
        env["FAKE_APPTAINER_LOG"] = str(log)
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_counts(text: str) -> dict[str, int]:
    block = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


@pytest.fixture
def article_config(tmp_path):
    """config/article.yaml under a private experiment name (results/pytest-containers, removed afterwards)."""
    cfg = yaml.safe_load((ROOT / "config" / "article.yaml").read_text())
    cfg["experiment"] = EXPERIMENT
    path = tmp_path / "article.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path, cfg
    shutil.rmtree(ROOT / "results" / EXPERIMENT, ignore_errors=True)


def test_dry_run_plans_one_base_image_and_a_layer_per_arm(article_config):
    path, cfg = article_config
    proc = snakemake("--use-singularity", "-n", "--configfile", str(path), "--config", f"gpu={{type: {H100}}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    arms = [a["name"] for a in cfg["arms"]]
    built = (ROOT / "results/images/vllm-0.7.1/base.json").exists()  # a checkout that built or imported it
    assert counts.get("build_base_image", 0) == (0 if built else 1)
    assert counts["arm_layer"] == len(arms)
    assert counts["serve_sweep"] == len(arms) * cfg["sweep"]["repeats"]
    assert "build_image" not in counts  # no multi-gigabyte image per arm
    for rule in ("aggregate", "report"):
        assert counts.get(rule) == 1, f"{rule} missing from the plan: {counts}"
    for arm in arms:
        assert f"results/{EXPERIMENT}/images/vllm-0.7.1/{H100}/{arm}.layer.json" in out


def test_dry_run_stops_on_an_impossible_pair_naming_both(article_config):
    path, _ = article_config
    proc = snakemake("--use-singularity", "-n", "--configfile", str(path), "--config", "gpu={type: rtx5090-sm120-32g}")
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "vllm-0.7.1" in err and "rtx5090-sm120-32g" in err and "vllm-0.26.0" in err
    assert "build_base_image" not in err and "arm_layer" not in err  # stopped before planning any job
    assert not (ROOT / "results" / EXPERIMENT / "images").exists()


def test_missing_apptainer_and_gpu_problem_reported_together_at_parse_time(article_config, tmp_path):
    """No apptainer on PATH: one WorkflowError line names it and how to install it, next to the GPU check's problem,
    before any job is planned."""
    path, _ = article_config
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": f"{bare}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "-n",
            "--use-singularity",
            "--configfile",
            str(path),
            "--config",
            "gpu={type: rtx5090-sm120-32g}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    (line,) = [e for e in err.splitlines() if "apptainer is not on PATH" in e]
    assert "rtx5090-sm120-32g" in line and "tests/apptainer/setup.sh" in line
    assert "Job stats" not in err


def test_gpu_runs_get_nv_from_the_profile_and_the_server_argv():
    """--nv reaches both ways of entering a GPU image: Snakemake's container: rules through the default profile's
    apptainer-args, and run-arm's server argv (tests/unit/test_engine.py checks that argv as text)."""
    profile_args = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())["apptainer-args"]
    assert "--nv" in profile_args.split()
