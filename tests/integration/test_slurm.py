"""The SLURM profile (profiles/slurm) with Snakemake's real SLURM executor plugin.

Dry runs (no cluster needed; the plugin must be installed: pip install -e '.[slurm]'): each server+sweep job of the
article asks for a GPU of the type it targets, the CPU demo asks for none.

`test_demo_runs_through_slurm` (marked slurm, engine, slow) runs the CPU demo through a real one-node SLURM
cluster: start it with `tests/slurm/start-cluster.sh` (root; Debian's slurm-wlm), then
    ATTNBENCH_ENGINE_PYTHON=/path/to/engine/python pytest -m slurm tests/integration/test_slurm.py
Without a running cluster the test skips, saying so; with ATTNBENCH_REQUIRE_SLURM=1 it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
H100 = "h100-80gb-hbm3-sm90-80g"


def require_plugin() -> None:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        reason = "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def workdir(tmp_path: Path) -> Path:
    """A shared-directory stand-in: config paths in the experiment files are relative to the working dir."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("config", "containers"):
        (work / name).symlink_to(ROOT / name)
    return work


def snakemake(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "--workflow-profile",
        str(ROOT / "profiles" / "slurm"),
        *args,
    ]
    # The rules call the `attnbench` CLI of this venv; SLURM jobs inherit PATH (sbatch --export=ALL).
    # Last on PATH, the dry-run stand-in apptainer (answers --version only): runtime-apptainer configs need one to plan.
    env = {
        **os.environ,
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), os.environ.get("PATH", ""), str(ROOT / "tests" / "fakes")]
        ),
    }
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def job_blocks(output: str) -> list[dict]:
    """The job descriptions a dry run prints: rule name plus its `resources:` line parsed to a dict."""
    jobs = []
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", output, re.M):
        res = re.search(r"^    resources: (.*)$", match.group(2), re.M)
        pairs = dict(item.split("=", 1) for item in res.group(1).split(", ")) if res else {}
        jobs.append({"rule": match.group(1), "resources": pairs})
    return jobs


def test_article_dry_run_shows_each_server_jobs_gpu_request(tmp_path):
    require_plugin()
    work = workdir(tmp_path)
    proc = snakemake(
        work,
        "-n",
        "--configfile",
        str(ROOT / "config/article.yaml"),
        str(ROOT / "profiles/slurm/site.example.yaml"),
        "--config",
        f"gpu={{type: {H100}}}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    article = yaml.safe_load((ROOT / "config/article.yaml").read_text(encoding="utf-8"))
    servers = [j for j in job_blocks(proc.stdout) if j["rule"] == "serve_sweep"]
    assert len(servers) == len(article["arms"]) * article["sweep"]["repeats"]
    for job in servers:
        res = job["resources"]
        assert (res["gpu"], res["gpu_model"], res["slurm_partition"]) == ("1", "h100", "gpu-h100"), res
        assert res["cpus_per_gpu"] == "8" and res["mem_mb"] == "64000" and res["runtime"] == "240"
        assert "cpus_per_task" not in res  # it would override --cpus-per-gpu in the plugin


def test_demo_dry_run_asks_for_cpus_and_no_gpu(tmp_path):
    require_plugin()
    work = workdir(tmp_path)
    proc = snakemake(work, "-n", "--configfile", str(ROOT / "config/demo.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    servers = [j for j in job_blocks(proc.stdout) if j["rule"] == "serve_sweep"]
    assert servers
    for job in servers:
        assert "gpu" not in job["resources"] and "gpu_model" not in job["resources"]
        assert job["resources"]["cpus_per_task"] == "2" and job["resources"]["mem_mb"] == "6000"


# --- a real one-node SLURM cluster -------------------------------------------------------------------------------


def cluster_or_skip() -> None:
    reason = None
    if shutil.which("sinfo") is None:
        reason = "no SLURM client (sinfo) on PATH; start one with tests/slurm/start-cluster.sh"
    else:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        states = proc.stdout.split()
        if proc.returncode != 0 or not any(s in ("idle", "mix", "alloc") for s in states):
            reason = f"no schedulable SLURM node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    if reason:
        if os.environ.get("ATTNBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.slurm
@pytest.mark.engine
@pytest.mark.slow
def test_demo_runs_through_slurm(tmp_path, engine_python):
    require_plugin()
    cluster_or_skip()
    work = workdir(tmp_path)
    # The engine the demo builds as a venv is replaced by the already built one (runtime native), and one repeat
    # keeps this to two SLURM jobs; everything else is config/demo.yaml.
    overlay = work / "test-overlay.yaml"
    overlay.write_text(
        yaml.safe_dump({"engine": {"runtime": "native", "python": engine_python}, "sweep": {"repeats": 1}}),
        encoding="utf-8",
    )
    proc = snakemake(
        work,
        "--configfile",
        str(ROOT / "config/demo.yaml"),
        str(overlay),
        "--slurm-init-seconds-before-status-checks",
        "5",
        timeout=3000,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    # Only the server+sweep runs are cluster jobs; the model, tables, plots, report (and bundle) run locally.
    assert len(submitted) == 2, log[-6000:]
    assert re.search(r"^localrule synthetic_model:", log, re.M) and re.search(r"^localrule report:", log, re.M)
    exp = work / "results" / "demo"
    runs = sorted(exp.glob("runs/*/rep*/run.json"))
    assert len(runs) == 2
    job_ids = set()
    for path in runs:
        run = json.loads(path.read_text(encoding="utf-8"))
        assert run["status"] == "ok"
        assert run["slurm_job_id"] in submitted.values(), (run["slurm_job_id"], submitted)
        job_ids.add(run["slurm_job_id"])
        # The SLURM log of the job is kept and names the job that wrote this run.
        slurm_logs = list(work.glob(f".snakemake/slurm_logs/rule_serve_sweep/*/{run['slurm_job_id']}.log"))
        assert slurm_logs, f"no SLURM log for job {run['slurm_job_id']}"
        assert (path.parent / "records.jsonl").stat().st_size > 0
    assert len(job_ids) == 2  # one SLURM job per (arm, repeat)
    assert (exp / "report.md").exists()

    bundles = sorted(exp.glob("bundle-*.tar.gz"))
    if (ROOT / "workflow/rules/bundle.smk").exists():
        assert bundles, "bundle.smk is included but no bundle was written"
        with tarfile.open(bundles[0]) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))
            manifest_text = tar.extractfile(member).read().decode()
        assert all(job_id in manifest_text for job_id in job_ids)
        verify = subprocess.run(
            [str(Path(sys.executable).with_name("attnbench")), "verify", str(bundles[0])],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr


# One rule with serve_sweep's SLURM request for the GPU type given as --config gpu_type=...
GPU_PROBE_SNAKEFILE = """
import json
from attnbench.engines.cluster import run_resources

rule gpu_probe:
    output: "probe.txt"
    resources: **run_resources(json.load(open("cfg.json")), gpu_type=config["gpu_type"])
    shell: "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION > {output}"
"""


@pytest.mark.slurm
def test_gpu_request_reaches_slurm(tmp_path):
    """The serve_sweep request for a GPU type, submitted by the plugin through the SLURM profile, against real
    SLURM scheduling: the test cluster's node has one stand-in `h100` GPU in partition gpu-h100
    (tests/slurm/start-cluster.sh). Nothing computes on it; this checks the request, not a GPU."""
    require_plugin()
    cluster_or_skip()
    from attnbench.config import load_config

    raw = yaml.safe_load((ROOT / "config/article.yaml").read_text(encoding="utf-8"))
    raw["slurm"] = {
        "gpu_models": {
            H100: {"gpu_model": "h100", "partition": "gpu-h100"},
            "a100-sxm4-80gb-sm80-80g": {"gpu_model": "a100", "partition": "gpu-h100"},
        },
        "run": {"cpus_per_gpu": 1, "mem_mb": 500, "runtime": 5},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(load_config(raw)), encoding="utf-8")
    (tmp_path / "Snakefile").write_text(GPU_PROBE_SNAKEFILE, encoding="utf-8")

    def submit(gpu_type: str) -> subprocess.CompletedProcess:
        cmd = [
            SNAKEMAKE,
            "--workflow-profile",
            str(ROOT / "profiles/slurm"),
            "--config",
            f"gpu_type={gpu_type}",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--forceall",
        ]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    proc = submit(H100)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    job_id, partition = (tmp_path / "probe.txt").read_text(encoding="utf-8").split()
    assert partition == "gpu-h100"
    job = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    assert re.search(r"TresPerJob=\S*gpu:h100:1\b", job), job
    assert re.search(r"\bMinCPUsNode=1\b", job) and "Partition=gpu-h100" in job

    # A GPU model the partition does not have is refused by SLURM at submission, and the run says so.
    proc = submit("a100-sxm4-80gb-sm80-80g")
    assert proc.returncode != 0
    assert re.search(r"gpus=a100:1", proc.stdout + proc.stderr), (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.slurm
@pytest.mark.engine
def test_failed_slurm_job_keeps_raw_records_and_says_why(tmp_path, engine_python):
    """A run that fails on a node: the SLURM job fails, its log is kept, and the run folder (run.json with the
    reason and the SLURM job id, raw records, server.log) survives under results/<exp>/failed/."""
    require_plugin()
    cluster_or_skip()
    work = workdir(tmp_path)
    overlay = work / "broken.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "engine": {"runtime": "native", "python": engine_python, "startup_timeout_s": 300},
                "arms": [{"name": "broken", "backend": "CPU_ATTN", "server_args": ["--no-such-flag"]}],
                "baseline": "broken",
                "sweep": {"repeats": 1},
            }
        ),
        encoding="utf-8",
    )
    proc = snakemake(
        work,
        "--configfile",
        str(ROOT / "config/demo.yaml"),
        str(overlay),
        "--slurm-init-seconds-before-status-checks",
        "5",
        "results/demo/runs/broken/rep0/run.json",
        timeout=1200,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-4000:]
    (job_id,) = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert re.search(rf"Error in rule serve_sweep:.*?SLURM.*?{job_id}", log, re.S), log[-4000:]
    (kept,) = (work / "results/demo/failed").glob("broken-rep0-*")
    run = json.loads((kept / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "failed" and run["slurm_job_id"] == job_id
    assert "server" in run["error"] and (kept / "records.jsonl").exists()
    assert "--no-such-flag" in (kept / "server.log").read_text(encoding="utf-8")
    assert list(work.glob(f".snakemake/slurm_logs/rule_serve_sweep/broken_0/{job_id}.log"))
