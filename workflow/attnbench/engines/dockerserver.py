"""Runtime docker: the engine server in a container. `DockerServer` is `server.Server` for runtime docker: the same
lifecycle (server.ServerLifecycle: start, wait_ready, stop, SIGTERM handling), driving a container through the docker
SDK (Docker, or podman's compatible API via DOCKER_HOST)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from attnbench.engines.dockerbuild import docker_client
from attnbench.engines.images import LABEL_PREFIX
from attnbench.engines.server import ServerLifecycle, applied_priority, launch_argv
from attnbench.errors import ContainerError

# Containers started by DockerServer carry these labels, so ones orphaned by a SIGKILLed parent can be found.
OWNER_LABEL = f"{LABEL_PREFIX}.owner-pid"
ROLE_LABEL = f"{LABEL_PREFIX}.role"
# vLLM's engine core talks to its workers through /dev/shm rings (160 MiB and up); Docker's default is 64 MiB.
# A size, not --ipc=host, so the container does not share the host's IPC namespace.
SHM_SIZE = "8g"


def _bind_paths(spec) -> dict[str, dict]:
    """Volumes for the container: the working directory and every existing absolute path the command or its env
    names, each at the same path inside, so the argv means the same thing in and out. Env paths (the profiler's
    trace folder) are writable; the rest is read-only."""
    volumes = {os.getcwd(): {"bind": os.getcwd(), "mode": "ro"}}
    for value in spec.argv:
        if value.startswith("/") and Path(value).exists() and value != "/":
            volumes.setdefault(value, {"bind": value, "mode": "ro"})
    for value in spec.env.values():
        if str(value).startswith("/") and Path(value).is_dir():
            volumes[value] = {"bind": value, "mode": "rw"}
    return volumes


def container_argv(argv: list[str]) -> list[str]:
    """The server must listen on all interfaces INSIDE the container for the published port to reach it; the host
    side stays loopback-only (see DockerServer.start)."""
    out = list(argv)
    for i, value in enumerate(out[:-1]):
        if value == "--host":
            out[i + 1] = "0.0.0.0"
    return out


class DockerServer(ServerLifecycle):
    """`server.Server` for runtime docker: `with DockerServer(spec, log, url, timeout, image=...) as srv: ...`.

    The container runs spec.argv (entrypoint replaced) with spec.env, the host port of base_url published on
    127.0.0.1 only, a GPU request when device is cuda, and its output streamed into log_path. It is removed when
    stopped: after success, failure, Ctrl-C and SIGTERM (turned into SystemExit while it runs, as server.Server does).
    Containers of a parent that died by SIGKILL are removed by the next DockerServer.start (see cleanup_orphans).
    """

    error = ContainerError
    log_settle_s = 0.5  # let the log stream catch the last lines of a container that died

    def __init__(
        self,
        spec,
        log_path: Path,
        base_url: str,
        startup_timeout_s: float,
        *,
        image: str | None = None,
        device: str | None = None,
        client=None,
        name: str | None = None,
    ):
        self.spec = spec
        self.log_path = Path(log_path)
        self.base_url = base_url.rstrip("/")
        self.startup_timeout_s = startup_timeout_s
        self.image = image or spec.description.get("image")
        if not self.image:
            raise ContainerError("DockerServer needs an image (LaunchSpec.description['image'] or image=)")
        self.device = device or spec.description.get("device") or "cpu"
        self._client = client
        self.name = name
        self.container = None
        self.started_at: float | None = None
        self._exit_code: int | None = None
        self._oom = False
        self._log_thread: threading.Thread | None = None
        self._old_sigterm = None

    @property
    def client(self):
        self._client = docker_client(self._client)
        return self._client

    @property
    def pid(self) -> int | None:
        if self.container is None:
            return None
        return (self.container.attrs.get("State") or {}).get("Pid") or None

    def start(self) -> None:
        import docker
        from docker.types import DeviceRequest

        if self.container is not None:  # idempotent like server.Server: `with srv: srv.start()` starts once
            return
        cleanup_orphans(self.client)
        url = urlparse(self.base_url)
        if url.hostname not in ("127.0.0.1", "localhost") or not url.port:
            raise ContainerError(f"base_url {self.base_url}: the published port must be on 127.0.0.1 with a port")
        device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.device == "cuda" else None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._install_sigterm_handler()
        try:
            self.container = self.client.containers.run(
                self.image,
                # entrypoint=argv[0]: an empty entrypoint means "keep the image's" to podman, so set it explicitly.
                entrypoint=self._argv()[:1],
                command=self._argv()[1:],
                environment=dict(self.spec.env),
                ports={f"{url.port}/tcp": ("127.0.0.1", url.port)},
                volumes=_bind_paths(self.spec),
                working_dir=os.getcwd(),
                device_requests=device_requests,
                labels={OWNER_LABEL: str(os.getpid()), ROLE_LABEL: "server"},
                name=self.name,
                shm_size=SHM_SIZE,
                # An init as PID 1 forwards docker stop's SIGTERM to the server and reaps its workers; a server
                # that is PID 1 itself ignores SIGTERM unless it installed a handler.
                init=True,
                detach=True,
            )
        except docker.errors.ImageNotFound:
            self._restore_sigterm_handler()
            raise ContainerError(f"image {self.image} is not present; build it first (attnbench image build)") from None
        except docker.errors.APIError as exc:
            self._restore_sigterm_handler()
            raise ContainerError(f"cannot start container from {self.image}: {exc.explanation or exc}") from None
        self.started_at = time.monotonic()
        if self.spec.nice:
            # The container's first process (its init, a host pid under podman) heads the container's session.
            self.container.reload()
            self.priority = applied_priority(self.spec, self.pid)
        self._log_thread = threading.Thread(target=self._stream_logs, name="docker-server-log", daemon=True)
        self._log_thread.start()

    def _argv(self) -> list[str]:
        # `nice` runs inside the image (coreutils): the server and its workers start at the lower priority. (engine.cpus
        # is refused for runtime docker by the config rules: a container's cpuset would also bind the engine's worker.)
        return container_argv(launch_argv(self.spec))

    def _stream_logs(self) -> None:
        # Appends raw bytes as they come; a crash of the parent keeps everything written so far.
        try:
            with self.log_path.open("ab") as fh:
                for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    fh.write(chunk)
                    fh.flush()
        except Exception:  # the container was removed under the stream: nothing more to log
            pass

    def _refresh(self) -> dict:
        import docker

        if self.container is None:
            return {}
        if self._exit_code is not None:
            return {"Status": "exited", "ExitCode": self._exit_code, "OOMKilled": self._oom}
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return {"Status": "removed"}
        state = self.container.attrs.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            self._exit_code, self._oom = state.get("ExitCode"), bool(state.get("OOMKilled"))
        return state

    def alive(self) -> bool:
        return self._refresh().get("Status") in ("created", "running", "restarting")

    def exit_reason(self) -> str | None:
        state = self._refresh()
        status = state.get("Status")
        if status in (None, "created", "running", "restarting"):
            return None
        if status == "removed":
            return "server container was removed from outside"
        if state.get("OOMKilled"):
            return "server container killed: out of memory"
        code = state.get("ExitCode")
        if code is not None and code > 128:
            try:
                return f"server container killed by {signal.Signals(code - 128).name}"
            except ValueError:
                pass
        return f"server container exited with code {code}"

    def stop(self, grace_s: float = 20) -> int | None:
        """docker stop (TERM, grace, KILL), then remove the container. Returns its exit code. Safe to call twice."""
        import docker

        if self.container is None:
            return None
        try:
            # stop returns once the container has stopped (the SDK allows it its client timeout, 60 s, past the
            # grace), so the wait only fetches the exit code: bounded short, the whole stop stays under 150 s.
            self.container.stop(timeout=int(grace_s))
            result = self.container.wait(timeout=10)
            self._exit_code = result.get("StatusCode", self._exit_code)
            self._refresh()
        except docker.errors.NotFound:
            pass
        except Exception:  # a hung daemon must not keep the container: removal below forces it
            pass
        finally:
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "removal" not in str(exc).lower():  # already being removed
                    raise ContainerError(f"cannot remove container {self.container.short_id}: {exc}") from None
            if self._log_thread is not None:
                self._log_thread.join(timeout=5)
            self._restore_sigterm_handler()
        return self._exit_code


def cleanup_orphans(client=None) -> list[str]:
    """Remove server containers whose owning attnbench process on this host no longer exists (it was SIGKILLed and
    could not clean up). Returns the removed containers' short ids."""
    client = docker_client(client)
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{ROLE_LABEL}=server"}):
        owner = (container.labels or {}).get(OWNER_LABEL, "")
        if owner.isdigit() and not _pid_alive(int(owner)):
            container.remove(force=True)
            removed.append(container.short_id)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
