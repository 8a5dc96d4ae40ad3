"""runtime docker for real: containers driven through the docker SDK against podman's Docker-compatible API.

Run them with `bash tests/podman.sh`: it installs podman, builds the local CPU engine image (no registry involved),
starts podman's Docker-compatible API and points DOCKER_HOST at it. Without DOCKER_HOST these tests skip with that
instruction; with ATTNBENCH_REQUIRE_PODMAN=1 (set by tests/podman.sh) a missing piece FAILS instead, so that step
cannot pass by skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from standin import stand_in_server_code  # tests/integration is on sys.path (pytest prepend import mode)

from attnbench.engines import dockerserver
from attnbench.engines.server import LaunchSpec, free_port
from attnbench.errors import ContainerError

pytestmark = pytest.mark.podman

ROOT = Path(__file__).resolve().parents[2]
CPU_IMAGE = "localhost/attnbench-vllm-cpu:0.32.0"


def _unavailable(reason: str):
    if os.environ.get("ATTNBENCH_REQUIRE_PODMAN") == "1":
        pytest.fail(f"podman tests must run here (ATTNBENCH_REQUIRE_PODMAN=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def podman_api():
    """A docker SDK client for DOCKER_HOST (podman's API as tests/podman.sh starts it, or a Docker daemon)."""
    import docker

    if not os.environ.get("DOCKER_HOST"):
        _unavailable("DOCKER_HOST is not set; run bash tests/podman.sh (starts podman's Docker-compatible API)")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer: {exc}")
    return client


@pytest.fixture(scope="session")
def cpu_image(podman_api):
    try:
        podman_api.images.get(CPU_IMAGE)
    except Exception:
        _unavailable(f"image {CPU_IMAGE} is missing: bash containers/cpu-engine/build-image.sh ENGINE_VENV")
    return CPU_IMAGE


def _ours(client) -> list:
    return client.containers.list(all=True, filters={"label": f"{dockerserver.ROLE_LABEL}=server"})


def _health_server_spec(port: int, *, exit_after_s: float | None = None, nice: int = 0) -> LaunchSpec:
    """A stand-in server (python's http.server in the engine image) that answers /health, for lifecycle tests that
    need no model. With exit_after_s it dies with code 3, like a crashing engine."""
    # inside, listen on all interfaces: the published port on 127.0.0.1 reaches it (DockerServer)
    code = stand_in_server_code(port, "0.0.0.0", exit_after_s=exit_after_s)
    return LaunchSpec(
        argv=["python3", "-c", code, "--host", "127.0.0.1"],
        env={"ATTNBENCH_TEST": "1"},
        runtime="docker",
        description={"image": CPU_IMAGE, "device": "cpu"},
        nice=nice,
    )


def test_container_lifecycle_port_logs_cleanup(podman_api, cpu_image, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with dockerserver.DockerServer(_health_server_spec(port), log, f"http://127.0.0.1:{port}", 60) as srv:
        srv.start()  # idempotent: run-arm calls it inside the with block
        assert srv.wait_ready() < 60
        assert srv.alive() and srv.exit_reason() is None
        ports = srv.container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"]
        assert [p["HostIp"] for p in ports] == ["127.0.0.1"]  # published on loopback only
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200  # the client is outside
        cid = srv.container.id
    assert srv.exit_reason() is not None
    assert cid not in [c.id for c in _ours(podman_api)]
    assert "stand-in server up" in log.read_text()


def test_nice_runs_the_containers_server_at_the_lower_priority(podman_api, cpu_image, tmp_path):
    """engine.nice under runtime docker: `nice` runs inside the image, and the container's session autogroup is
    lowered from the host (its init is a host process under podman)."""
    port = free_port()
    spec = _health_server_spec(port, nice=6)
    with dockerserver.DockerServer(spec, tmp_path / "s.log", f"http://127.0.0.1:{port}", 60) as srv:
        srv.wait_ready()
        init = srv.pid  # the container's init, a host process (podman runs it with init=True)
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                except OSError:
                    continue
                if int(fields[1]) == init:
                    children.append(int(fields[16]))  # the nice value
        assert children == [6]  # the stand-in server, started by `nice -n 6` inside the image
        assert srv.priority["nice"] == 6
        if os.path.exists(f"/proc/{srv.pid}/autogroup"):
            assert srv.priority["autogroup"] == "nice 6"


def test_dying_server_fails_startup_with_its_exit_code(podman_api, cpu_image, tmp_path):
    port = free_port()
    with pytest.raises(ContainerError, match="exited with code 3"):
        with dockerserver.DockerServer(
            _health_server_spec(9, exit_after_s=0.5), tmp_path / "s.log", f"http://127.0.0.1:{port}", 60
        ) as srv:
            srv.wait_ready()  # the stand-in listens on another port, so only the death ends the wait
    assert _ours(podman_api) == [] or all(c.id != srv.container.id for c in _ours(podman_api))


PARENT = """
import faulthandler, signal, sys, time
# Ctrl-C as a terminal delivers it, even when this test runs where SIGINT is ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks where a parent that did not exit is
from pathlib import Path
from attnbench.engines import dockerserver
from attnbench.engines.server import LaunchSpec
sys.path[:0] = [{tests!r}, {tests!r} + '/integration']
from integration.test_podman import _health_server_spec
port = int(sys.argv[1])
with dockerserver.DockerServer(_health_server_spec(port), Path(sys.argv[2]), f"http://127.0.0.1:{{port}}", 60) as srv:
    srv.wait_ready()
    print(srv.container.id, flush=True)
    # Short sleeps: the kernel may hand the signal to the log thread, and then only the main thread's next wake-up
    # runs Python's handler (one long sleep would outlast the test).
    for _ in range(3000):
        time.sleep(0.2)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_parent_terminated_or_interrupted_removes_the_container(podman_api, cpu_image, tmp_path, sig):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(tests=str(ROOT / "tests")), str(port), str(tmp_path / "s.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        cid = proc.stdout.readline().strip()
        assert cid, "parent did not start its container"
        proc.send_signal(sig)
        # docker stop (TERM, up to 20 s grace, KILL) and removal: about a second here, seconds on a loaded machine.
        # 240 s is past the sum of the SDK's own timeouts for those calls (150 s), so only a hang fails.
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack, to stderr
        time.sleep(2)
        proc.kill()
        pytest.fail(f"parent still running 240 s after {sig.name}; its threads:\n{proc.communicate(timeout=30)[1]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert cid not in [c.id for c in _ours(podman_api)]


def test_sigkilled_parent_leaves_an_orphan_that_the_next_start_removes(podman_api, cpu_image, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(tests=str(ROOT / "tests")), str(port), str(tmp_path / "s.log")],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    cid = proc.stdout.readline().strip()
    proc.kill()
    proc.wait(timeout=30)
    assert cid in [c.id for c in _ours(podman_api)]  # nothing could clean up after SIGKILL...
    removed = dockerserver.cleanup_orphans(podman_api)  # ...until the next DockerServer.start does this
    assert any(cid.startswith(short) for short in removed)
    assert cid not in [c.id for c in _ours(podman_api)]


@pytest.mark.engine
def test_run_arm_with_runtime_docker_end_to_end(podman_api, cpu_image, tmp_path, monkeypatch):
    """The demo's first arm, reduced: image built through the SDK, vLLM in the container, sweep from the host."""
    from attnbench.cli import main
    from attnbench.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "config" / "demo-docker.yaml")
    cfg["workloads"] = {"short": {"prompt_tokens": 45, "output_tokens": 16, "concurrency": [2]}}
    cfg["sweep"].update(requests_per_level=4, warmup_requests=1, min_level_seconds=0, warmup_seconds=0)
    cfg["model"]["architecture"] = str(ROOT / "config/models/tiny-qwen2.json")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    exp = tmp_path / "results" / "demo-docker"
    arm = "cpu_attn"
    image_json = exp / "images" / "vllm-cpu-0.32.0" / "cpu-x86_64" / f"{arm}.json"
    assert main(["image", "build", "--config", "cfg.json", "--arm", arm, "--out", str(image_json)]) == 0
    record = json.loads(image_json.read_text())
    assert record["pinned"] and record["resolved_digest"] == podman_api.images.get(CPU_IMAGE).id
    assert record["versions"]["vllm"] == "0.32.0" and record["labels"]["org.attnbench.backend"] == "CPU_ATTN"
    assert (
        main(
            [
                "make-model",
                "--architecture",
                cfg["model"]["architecture"],
                "--model-dir",
                str(exp / "models/tiny-qwen2/model"),
                "--tokenizer-dir",
                str(exp / "models/tiny-qwen2/tokenizer"),
            ]
        )
        == 0
    )
    out = exp / "runs" / arm / "rep0"
    assert (
        main(
            ["run-arm", "--config", "cfg.json", "--arm", arm, "--repeat", "0", "--out", str(out), "--exp-dir", str(exp)]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "ok", run["error"]
    assert run["engine"]["image"] == record["ref"] and run["engine"]["digest"] == record["resolved_digest"]
    assert run["engine"]["versions"]["vllm"] == "0.32.0"
    assert run["backend"]["match"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    measured = [r for r in records if r["phase"] == "measure"]
    assert len(measured) == 4 and all(r["ok"] and r["completion_tokens"] == 16 for r in measured)
    assert (
        "Starting vLLM" in (out / "server.log").read_text() or "Application startup" in (out / "server.log").read_text()
    )
    assert _ours(podman_api) == []
