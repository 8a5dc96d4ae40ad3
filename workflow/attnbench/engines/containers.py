"""Docker engine images: render their definitions, build them, find out what was built, and run the server in one;
plus the lock file (containers/lock.yaml) and image provenance for both container runtimes. Apptainer images (a
base image per engine line plus a layer per arm) live in apptainer.py.

One docker image per (engine line, arm, GPU type). The engine line is a key of containers/lock.yaml (base image, digest,
CUDA, compute capabilities); the arm bakes what selects its attention backend (environment for vLLM < 0.11, flags
for later lines, both from `engine.backend_selection`) and, for a variant arm, the variant's files from
containers/variants/<variant>/; the GPU type only goes into the labels and the file name, so that results and images
of different cards never mix.

Definitions are rendered from containers/<engine line>/Dockerfile.in (string.Template, `$name` placeholders). A variant
folder is copied to /opt/attnbench/variant, put first on PYTHONPATH (a sitecustomize.py there runs at interpreter
start) and its install.sh, if any, runs at build time.

Pinning: a lock entry's `digest` pins the base image (`From: image@sha256:...`). With digest null the build refuses
unless the config sets `engine.allow_unpinned: true`; it then builds from the tag, and records whatever digest it
could resolve (skopeo/docker inspect) next to `pinned: false` in image.json, which run provenance copies.

`DockerServer` is `server.Server` for runtime docker: the same methods, driving a container through the docker SDK
(Docker, or podman's compatible API via DOCKER_HOST).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import httpx

from attnbench.engines.backend import backend_selection
from attnbench.engines.lock import CONTAINERS_DIR, load_lock, lock_entry, variant_dir
from attnbench.engines.server import ServerLifecycle
from attnbench.errors import ConfigError, ContainerError

VARIANT_TARGET = "/opt/attnbench/variant"
LABEL_PREFIX = "org.attnbench"
# Containers started by DockerServer carry these labels, so ones orphaned by a SIGKILLed parent can be found.
OWNER_LABEL = f"{LABEL_PREFIX}.owner-pid"
ROLE_LABEL = f"{LABEL_PREFIX}.role"
# vLLM's engine core talks to its workers through /dev/shm rings (160 MiB and up); Docker's default is 64 MiB.
# A size, not --ipc=host, so the container does not share the host's IPC namespace.
SHM_SIZE = "8g"


# --- what one image is -------------------------------------------------------------------------------------------


@dataclass
class ImageSpec:
    """Everything that decides one image's content and name."""

    key: str  # engine line, a key of lock.yaml
    experiment: str
    arm: str
    gpu_type: str
    base: str  # image:tag
    digest: str | None  # registry digest of base, when pinned or resolved
    backend: str | None
    backend_args: list[str]
    backend_env: dict[str, str]
    variant: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def base_ref(self) -> str:
        """What the definition builds FROM: by digest when known, else the tag."""
        return f"{self.base.rsplit(':', 1)[0]}@{self.digest}" if self.digest else self.base

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def tag(self) -> str:
        """Docker tag: one repository per engine line and arm, the GPU type as the tag."""
        return f"localhost/attnbench-{self.experiment}-{self.key}-{self.arm}:{self.gpu_type}".lower()


def image_spec(cfg: dict, arm: dict, gpu_type: str, lock: dict, *, digest: str | None = None) -> ImageSpec:
    """The image an arm runs in. `digest` overrides the lock's (a digest resolved at build time)."""
    key = cfg["engine"].get("image")
    entry = lock_entry(lock, key)
    args, env = backend_selection(entry["version"], arm)
    digest = digest or entry.get("digest")
    base = f"{entry['image']}:{entry['tag']}"
    spec = ImageSpec(
        key=key,
        experiment=cfg["experiment"],
        arm=arm["name"],
        gpu_type=gpu_type,
        base=base,
        digest=digest,
        backend=arm.get("backend"),
        backend_args=list(args),
        backend_env=dict(env),
        variant=arm.get("variant"),
    )
    spec.labels = {
        f"{LABEL_PREFIX}.engine": key,
        f"{LABEL_PREFIX}.engine-version": str(entry["version"]),
        f"{LABEL_PREFIX}.backend": arm.get("backend") or "default",
        f"{LABEL_PREFIX}.arm": arm["name"],
        f"{LABEL_PREFIX}.variant": arm.get("variant") or "none",
        f"{LABEL_PREFIX}.gpu-type": gpu_type,
        f"{LABEL_PREFIX}.base": base,
        f"{LABEL_PREFIX}.lock-digest": entry.get("digest") or "unpinned",
    }
    return spec


def image_files(cfg: dict, arm_name: str, gpu_type: str, results_dir: str | os.PathLike) -> list[str]:
    """What a run of the arm needs from the image rules (containers.smk): for docker the build record; for apptainer
    the arm's layer record, the base image and the versions seen inside it. Empty for runtime venv/native."""
    from attnbench.engines import apptainer

    runtime = cfg["engine"]["runtime"]
    key = cfg["engine"].get("image")
    if runtime == "docker":
        return [str(Path(results_dir) / "images" / key / gpu_type / f"{arm_name}.json")]
    if runtime == "apptainer":
        return [
            str(apptainer.layer_path(results_dir, key, gpu_type, arm_name).with_suffix("").with_suffix(".layer.json")),
            str(apptainer.base_sif(key)),
            str(apptainer.base_versions_path(key)),
        ]
    return []


def image_for(cfg: dict, arm: dict, *, gpu_type: str | None = None) -> str:
    """The image a run uses: the engine line's base .sif (apptainer; the arm's layer is applied at exec time) or the
    arm's docker tag (docker)."""
    from attnbench.engines.apptainer import base_sif
    from attnbench.engines.gpu import resolve_gpu_type

    if cfg["engine"]["runtime"] == "apptainer":
        return str(base_sif(cfg["engine"]["image"]))
    gpu_type = gpu_type or resolve_gpu_type(cfg)
    entry = lock_entry(load_lock(), cfg["engine"]["image"])
    spec = ImageSpec(
        key=cfg["engine"]["image"],
        experiment=cfg["experiment"],
        arm=arm["name"],
        gpu_type=gpu_type,
        base=f"{entry['image']}:{entry['tag']}",
        digest=None,
        backend=None,
        backend_args=[],
        backend_env={},
        variant=None,
    )
    return spec.tag


# --- rendering ----------------------------------------------------------------------------------------------------


def _template(key: str, kind: str) -> string.Template:
    path = CONTAINERS_DIR / key / f"{kind}.in"
    if not path.is_file():
        raise ContainerError(f"engine line {key} has no {kind} template ({path})")
    return string.Template(path.read_text(encoding="utf-8"))


def _env(spec: ImageSpec) -> dict[str, str]:
    # ATTNBENCH_* name the image from inside (probe_versions.py records them), whatever runs it.
    env = {
        **spec.backend_env,
        "ATTNBENCH_ENGINE": spec.key,
        "ATTNBENCH_ARM": spec.arm,
        "ATTNBENCH_GPU_TYPE": spec.gpu_type,
    }
    if spec.variant:
        env["PYTHONPATH"] = VARIANT_TARGET
        env["ATTNBENCH_VARIANT"] = spec.variant
    return env


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render_dockerfile(spec: ImageSpec) -> str:
    env = _env(spec)
    copy_lines = f"COPY variant {VARIANT_TARGET}" if spec.variant else ""
    run_lines = (
        f"RUN if [ -f {VARIANT_TARGET}/install.sh ]; then sh {VARIANT_TARGET}/install.sh; fi" if spec.variant else ""
    )
    env_lines = "\n".join(f"ENV {k}={json.dumps(v)}" for k, v in sorted(env.items()))
    label_lines = "\n".join(f"LABEL {k}={json.dumps(v)}" for k, v in sorted(spec.labels.items()))
    args_json = "".join(", " + json.dumps(a) for a in spec.backend_args)
    text = _template(spec.key, "Dockerfile").substitute(
        base_ref=spec.base_ref,
        copy_lines=copy_lines,
        env_lines=env_lines,
        run_lines=run_lines,
        label_lines=label_lines,
        backend_args_json=args_json,
    )
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


# --- digests ------------------------------------------------------------------------------------------------------


def resolve_digest(base: str) -> str | None:
    """The registry digest of `image:tag` via skopeo, when skopeo and the registry are reachable; else None."""
    if shutil.which("skopeo") is None:
        return None
    try:
        proc = subprocess.run(
            ["skopeo", "inspect", "--no-tags", f"docker://{base}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout).get("Digest")


def require_pinned(cfg: dict, entry: dict, key: str) -> None:
    if entry.get("digest") or entry.get("local"):
        return
    if not cfg["engine"].get("allow_unpinned", False):
        raise ContainerError(
            f"engine image {key} ({entry['image']}:{entry['tag']}) has no digest in containers/lock.yaml, so the build "
            f"would not be reproducible. Resolve it with `{entry.get('resolve', 'skopeo inspect')}` and write it into "
            f"the lock file, or set engine.allow_unpinned: true to build from the tag (recorded as unpinned)"
        )


# --- building -----------------------------------------------------------------------------------------------------


def docker_client(client=None):
    if client is not None:
        return client
    import docker

    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise ContainerError(
            f"no Docker API reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {exc}"
        ) from None


def build_docker(spec: ImageSpec, dockerfile_out: Path, client=None) -> dict:
    """Build through the docker SDK from a temporary context holding the Dockerfile and the variant folder. The base
    is never pulled implicitly: a pinned base is pulled by digest first (when a registry is reachable), a local one
    must exist."""
    import docker

    client = docker_client(client)
    text = render_dockerfile(spec)
    Path(dockerfile_out).parent.mkdir(parents=True, exist_ok=True)
    Path(dockerfile_out).write_text(text, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="attnbench-build-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(text, encoding="utf-8")
        if spec.variant:
            shutil.copytree(variant_dir(spec.variant), Path(ctx) / "variant")
        try:
            image, _ = client.images.build(path=ctx, tag=spec.tag, pull=False, rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            lines = [c.get("stream", c.get("error", "")).strip() for c in exc.build_log if isinstance(c, dict)]
            raise ContainerError(
                f"docker build {spec.tag} failed: {exc.msg}; " + " | ".join(x for x in lines if x)[-800:]
            ) from None
        except docker.errors.APIError as exc:
            raise ContainerError(f"docker build {spec.tag} failed: {exc.explanation or exc}") from None
    return {"ref": spec.tag, "image_id": image.id, "dockerfile": str(dockerfile_out)}


def inspect_docker_image(ref: str, client=None) -> dict:
    """Facts about a local image: its ID, the registry digests it carries, its labels."""
    import docker

    client = docker_client(client)
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise ContainerError(f"image {ref} is not present (build it first: attnbench image build)") from None
    return {"image_id": image.id, "repo_digests": image.attrs.get("RepoDigests") or [], "labels": image.labels or {}}


PROBE_SCRIPT = CONTAINERS_DIR / "probe_versions.py"


def probe_docker_versions(ref: str, client=None) -> dict:
    """Run containers/probe_versions.py in a throwaway container of `ref`: the versions as the engine sees them."""
    import docker

    client = docker_client(client)
    try:
        out = client.containers.run(
            ref,
            entrypoint=["python3", "-c", PROBE_SCRIPT.read_text(encoding="utf-8")],
            command=[],
            remove=True,
            stdout=True,
            stderr=False,
        )
    except docker.errors.ContainerError as exc:
        raise ContainerError(f"version probe in {ref} failed: {exc.stderr!r}"[:500]) from None
    return json.loads(out)


def image_provenance(
    cfg: dict, arm: dict, *, gpu_type: str | None = None, results_dir: str | os.PathLike | None = None
) -> dict:
    """What run.json records about the image an arm ran in, from the records the image rules wrote: for apptainer
    the base SIF's sha256 and size, the lock's sha256 and the arm layer's digest and variant checksum; for docker the
    reference, digest (or unpinned) and image ID; both with the versions seen inside. Missing files give nulls,
    never a guess."""
    from attnbench.engines import apptainer
    from attnbench.engines.gpu import resolve_gpu_type

    gpu_type = resolve_gpu_type(cfg, gpu_type)
    results_dir = results_dir or Path("results") / cfg["experiment"]
    key = cfg["engine"]["image"]
    if cfg["engine"]["runtime"] == "apptainer":
        base = apptainer.read_json(apptainer.base_record_path(key)) or {}
        layer = apptainer.read_json(Path(image_files(cfg, arm["name"], gpu_type, results_dir)[0])) or {}
        versions = apptainer.read_json(apptainer.base_versions_path(key)) or {}
        return {
            "image": str(apptainer.base_sif(key)),
            "image_sha256": base.get("sif_sha256"),
            "image_bytes": base.get("sif_bytes"),
            "lock": base.get("requirements"),
            "lock_sha256": base.get("lock_sha256"),
            "pinned": bool(base.get("lock_sha256")),
            "layer_digest": layer.get("digest"),
            "variant": layer.get("variant"),
            "variant_sha256": layer.get("variant_sha256"),
            "imported": base.get("imported"),
            "versions": {k: versions.get(k) for k in ("vllm", "torch", "cuda", "xformers")} if versions else {},
        }
    record = apptainer.read_json(Path(image_files(cfg, arm["name"], gpu_type, results_dir)[0])) or {}
    versions = record.get("versions") or {}
    return {
        "image": record.get("ref") or image_for(cfg, arm, gpu_type=gpu_type),
        "digest": record.get("resolved_digest"),
        "pinned": record.get("pinned"),
        "image_id": record.get("image_id"),
        "base": record.get("base_ref"),
        "versions": {k: versions.get(k) for k in ("vllm", "torch", "cuda", "xformers")} if versions else {},
    }


def build_image(cfg: dict, arm: dict, gpu_type: str, out: Path, *, lock: dict | None = None, client=None) -> dict:
    """Check the pair, render, build, and write `out` (image.json: what was built and how it is pinned).
    Returns that record."""
    from attnbench.engines.gpu import check_compatible

    lock = lock or load_lock()
    check_compatible(cfg, gpu_type, lock, [arm])
    key = cfg["engine"].get("image")
    entry = lock_entry(lock, key)
    require_pinned(cfg, entry, key)
    resolved = entry.get("digest") or (
        None if entry.get("local") else resolve_digest(f"{entry['image']}:{entry['tag']}")
    )
    spec = image_spec(cfg, arm, gpu_type, lock, digest=resolved)
    out = Path(out)
    runtime = cfg["engine"]["runtime"]
    if runtime == "apptainer":
        raise ConfigError(
            "runtime apptainer builds one base image per engine line (attnbench image build-base) and a "
            "layer per arm (attnbench image layer), not a full image per arm"
        )
    if runtime == "docker":
        built = build_docker(spec, out.with_suffix(".Dockerfile"), client)
        facts = inspect_docker_image(spec.tag, client)
        built["versions"] = probe_docker_versions(spec.tag, client)
        if entry.get("local"):  # a local base has no registry digest; its image ID is what pins it
            facts_base = inspect_docker_image(spec.base, client)
            resolved = facts_base["image_id"]
        built["labels"] = facts["labels"]
    else:
        raise ConfigError(f"engine.runtime: {runtime!r} has no image to build; images are for docker and apptainer")
    record = {
        "schema": 1,
        "key": key,
        "engine_version": entry["version"],
        "runtime": runtime,
        "experiment": cfg["experiment"],
        "arm": arm["name"],
        "backend": arm.get("backend"),
        "variant": arm.get("variant"),
        "gpu_type": gpu_type,
        "base": spec.base,
        "base_ref": spec.base_ref,
        "lock_digest": entry.get("digest"),
        "resolved_digest": resolved,
        "pinned": bool(entry.get("digest")) or bool(entry.get("local")),
        "backend_env": spec.backend_env,
        "backend_args": spec.backend_args,
        "labels": spec.labels,
        "built": datetime.now(timezone.utc).isoformat(),
        **built,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record


# --- runtime docker: the server in a container --------------------------------------------------------------------


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
                entrypoint=container_argv(self.spec.argv)[:1],
                command=container_argv(self.spec.argv)[1:],
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
        self._log_thread = threading.Thread(target=self._stream_logs, name="docker-server-log", daemon=True)
        self._log_thread.start()

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

    def wait_ready(self) -> float:
        from attnbench.engines.server import log_tail

        if self.container is None or self.started_at is None:
            raise ContainerError("wait_ready() before start()")
        deadline = self.started_at + self.startup_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if not self.alive():
                    time.sleep(0.5)  # let the log stream catch the last lines
                    raise ContainerError(
                        f"server exited during startup ({self.exit_reason()}); last log lines of "
                        f"{self.log_path}:\n{log_tail(self.log_path)}"
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return time.monotonic() - self.started_at
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ContainerError(
                        f"server not ready after {self.startup_timeout_s:.0f} s ({self.base_url}/health);"
                        f" last log lines of {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                time.sleep(0.5)

    def stop(self, grace_s: float = 20) -> int | None:
        """docker stop (TERM, grace, KILL), then remove the container. Returns its exit code. Safe to call twice."""
        import docker

        if self.container is None:
            return None
        try:
            self.container.stop(timeout=int(grace_s))
            result = self.container.wait(timeout=grace_s + 30)
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


# --- CLI ----------------------------------------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    from attnbench.config import arm_by_name, load_config
    from attnbench.engines.gpu import resolve_gpu_type

    cfg = load_config(args.config)
    gpu_type = resolve_gpu_type(cfg, args.gpu_type)
    record = build_image(cfg, arm_by_name(cfg, args.arm), gpu_type, Path(args.out), lock=load_lock(args.lock))
    state = "pinned" if record["pinned"] else "UNPINNED"
    print(f"built {record['ref']} ({state}, base {record['base_ref']}, resolved digest {record['resolved_digest']})")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from attnbench.config import arm_by_name, load_config
    from attnbench.engines.gpu import check_compatible, resolve_gpu_type

    cfg = load_config(args.config)
    lock = load_lock(args.lock)
    gpu_type = resolve_gpu_type(cfg, args.gpu_type)
    arm = arm_by_name(cfg, args.arm)
    check_compatible(cfg, gpu_type, lock, [arm])
    print(render_dockerfile(image_spec(cfg, arm, gpu_type, lock)), end="")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    print(json.dumps(inspect_docker_image(args.ref), indent=2, sort_keys=True))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("image", help="engine images: render definitions, build (apptainer/docker), inspect")
    sub = p.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    for name, func, helptext in (
        (
            "build",
            _cmd_build,
            "runtime docker: check the GPU pair, render and build one arm's image; write image.json to --out",
        ),
        ("render", _cmd_render, "print one arm's rendered Dockerfile"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--config", required=True, help="experiment config YAML")
        c.add_argument("--arm", required=True, help="arm name")
        c.add_argument("--gpu-type", default=None, help="GPU type key (default: gpu.type; auto = detect)")
        c.add_argument("--lock", default=None, help="lock file (default: containers/lock.yaml)")
        if name == "build":
            c.add_argument("--out", required=True, help="image.json to write; the .sif/.Dockerfile goes next to it")
        c.set_defaults(func=func)
    from attnbench.engines.apptainer import register_image_commands

    register_image_commands(sub)
    i = sub.add_parser("inspect", help="print a local docker image's ID, digests and labels")
    i.add_argument("ref", help="image reference")
    i.set_defaults(func=_cmd_inspect)
