"""containers.smk through Snakemake itself: `--use-singularity -n` plans image builds per (engine, arm, GPU type);
an impossible engine/GPU pair stops the dry run; and the one rule that runs inside the image gets the profile's
--nv and binds on its apptainer command line.

There is no Apptainer here. Snakemake insists on an apptainer binary even for a dry run, so these tests put
tests/fakes/apptainer (a TEST STAND-IN that records its arguments) first on PATH. It never runs in real use.
"""

from __future__ import annotations

import json
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
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


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


def test_dry_run_plans_images_per_engine_arm_gpu_type(article_config):
    path, cfg = article_config
    proc = snakemake("--use-singularity", "-n", "--configfile", str(path), "--config", f"gpu={{type: {H100}}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    arms = [a["name"] for a in cfg["arms"]]
    assert counts["build_image"] == len(arms)
    assert counts["engine_versions"] == len(arms)
    assert counts["serve_sweep"] == len(arms) * cfg["sweep"]["repeats"]
    for rule in ("aggregate", "report"):
        assert counts.get(rule) == 1, f"{rule} missing from the plan: {counts}"
    for arm in arms:
        assert f"results/{EXPERIMENT}/images/vllm-0.7.1/{H100}/{arm}.sif" in out


def test_dry_run_stops_on_an_impossible_pair_naming_both(article_config):
    path, _ = article_config
    proc = snakemake("--use-singularity", "-n", "--configfile", str(path), "--config", "gpu={type: rtx5090-sm120-32g}")
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "vllm-0.7.1" in err and "rtx5090-sm120-32g" in err and "vllm-0.26.0" in err
    assert "build_image" not in err  # stopped before planning any job
    assert not (ROOT / "results" / EXPERIMENT / "images").exists()


def test_container_rule_runs_with_profile_nv_and_binds(article_config, tmp_path):
    """A real (not dry) run of build_image + engine_versions with the recording stand-in: the build goes through
    `apptainer build`, and Snakemake wraps engine_versions in `apptainer exec` with the default profile's
    apptainer-args. The stand-in runs the probe on the host, so its versions describe the host, not an image."""
    path, cfg = article_config
    cfg["engine"]["allow_unpinned"] = True
    cfg["gpu"] = {"type": H100}
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "apptainer-calls.log"
    target = f"results/{EXPERIMENT}/images/vllm-0.7.1/{H100}/xformers.versions.json"
    proc = snakemake(target, "--use-singularity", "--configfile", str(path), log=log)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    calls = log.read_text().splitlines()
    sif = f"results/{EXPERIMENT}/images/vllm-0.7.1/{H100}/xformers.sif"
    build = [c for c in calls if c.startswith("build ")]
    assert build == [f"build --force {sif} {sif[:-4]}.def"]
    (run,) = [c for c in calls if c.startswith("exec ")]
    profile_args = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())["apptainer-args"]
    assert "--nv" in profile_args.split()
    assert f" {profile_args} " in run and f" {sif} " in run and "probe_versions.py" in run
    versions = json.loads((ROOT / target).read_text())
    assert set(versions) >= {"vllm", "torch", "cuda", "xformers"}
    assert versions["image_labels_env"]["ATTNBENCH_ENGINE"] == "vllm-0.7.1"  # the %environment was applied
    record = json.loads((ROOT / sif).with_suffix(".json").read_text())
    assert record["pinned"] is False and record["lock_digest"] is None  # unpinned, and says so
