"""Running Apptainer: where the base images live, the host's capability quirk, and the `apptainer exec` command
line of an arm's server (binds and environment). Building base images and arm layers is apptainer.py; moving an
image to a host without network is apptainer_transfer.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from attnbench.engines.lock import variant_dir
from attnbench.errors import ContainerError

IMAGES_DIR = Path("results/images")  # relative to the workflow's working directory
# The capabilities Apptainer requests for root by default (CAP_CHOWN .. CAP_CHECKPOINT_RESTORE, bits 0-40).
CAPABILITY_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE "
    "NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT "
    "SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
).split()


# --- where things are -----------------------------------------------------------------------------------------


def base_dir(key: str, images_dir: str | os.PathLike | None = None) -> Path:
    return Path(images_dir or IMAGES_DIR) / key


def base_sif(key: str, images_dir: str | os.PathLike | None = None) -> Path:
    return base_dir(key, images_dir) / "base.sif"


def base_record_path(key: str, images_dir: str | os.PathLike | None = None) -> Path:
    return base_dir(key, images_dir) / "base.json"


def base_versions_path(key: str, images_dir: str | os.PathLike | None = None) -> Path:
    return base_dir(key, images_dir) / "base.versions.json"


def layer_path(exp_dir: str | os.PathLike, key: str, gpu_type: str, arm: str) -> Path:
    return Path(exp_dir) / "images" / key / gpu_type / f"{arm}.json"


# --- host quirks ----------------------------------------------------------------------------------------------


def missing_capabilities(status_text: str | None = None) -> list[str]:
    """Capabilities Apptainer asks for as root that this host's bounding set lacks (CAP_SYS_RESOURCE on the
    machines this was built on). Apptainer aborts its starter when root requests one it cannot have; dropping them
    (--drop-caps / APPTAINER_DROP_CAPS) is the fix that needs no edit of apptainer.conf. Empty for non-root users,
    who get no capabilities by default."""
    if status_text is None:
        if os.geteuid() != 0:
            return []
        try:
            status_text = Path("/proc/self/status").read_text(encoding="utf-8")
        except OSError:
            return []
    for line in status_text.splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
            return [f"CAP_{name}" for bit, name in enumerate(CAPABILITY_NAMES) if not bounding >> bit & 1]
    return []


def apptainer_env() -> dict[str, str]:
    """Environment for apptainer commands that attnbench does not build itself (Snakemake's container: rules)."""
    missing = missing_capabilities()
    return {"APPTAINER_DROP_CAPS": ",".join(missing)} if missing else {}


def run_apptainer(
    args: list[str], what: str, log=None, timeout: float | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run apptainer with `env` added to this process's environment; a failure is a ContainerError that names
    Apptainer's own last FATAL/ERROR line (from `log`, an open file, where the output went there)."""
    exe = shutil.which("apptainer")
    if exe is None:
        raise ContainerError(f"{what}: apptainer is not on PATH ({install_hint()})")
    full_env = {**os.environ, **apptainer_env(), **(env or {})}
    if log is not None:  # where this command's output starts: the log holds earlier steps and builds too
        log.flush()
        start = os.fstat(log.fileno()).st_size
    proc = subprocess.run(
        [exe, *args], env=full_env, text=True, stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    )
    if proc.returncode != 0:
        if log is None:
            tail = " | ".join((proc.stdout or "").strip().splitlines()[-8:])
        else:
            log.flush()
            cause = failure_line(Path(log.name), start)
            tail = f"{cause} (see {log.name})" if cause else f"see {log.name}"
        raise ContainerError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


def failure_line(log_path: Path, start: int = 0, window: int = 64 * 1024) -> str | None:
    """The last line that says why Apptainer stopped (FATAL:, ERROR:, a full disk), in the end of what it wrote to
    its log from byte `start` on."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(start, log_path.stat().st_size - window))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        text = line.strip()
        if text.startswith(("FATAL", "ERROR")) or "No space left" in text:
            return text[:300]
    return None


def install_hint() -> str:
    return (
        "install Apptainer >= 1.1 (https://apptainer.org/docs/admin/main/installation.html: the apptainer "
        "package of your distribution, or the project's .deb/.rpm); on Debian 12 without it, "
        "`bash tests/apptainer/setup.sh` provides one (see README.md)"
    )


def apptainer_version() -> str | None:
    exe = shutil.which("apptainer")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


# --- the server's command line ------------------------------------------------------------------------------------


def exec_argv(
    sif: str | os.PathLike,
    inner_argv: list[str],
    *,
    env: dict[str, str] | None = None,
    binds: list[str] | None = None,
    gpu: bool = False,
    missing_caps: list[str] | None = None,
) -> list[str]:
    """`apptainer exec` of inner_argv in the image. --cleanenv: the host's environment (a PYTHONPATH meant for the
    host's Python, say) must not leak into the engine; what the server needs is passed with --env, so it is also
    visible in the recorded argv. --nv binds the host's NVIDIA driver into the container."""
    argv = ["apptainer", "exec", "--cleanenv"]
    if gpu:
        argv.append("--nv")
    caps = missing_capabilities() if missing_caps is None else missing_caps
    if caps:
        argv += ["--drop-caps", ",".join(caps)]
    for bind in binds or []:
        argv += ["--bind", bind]
    for key, value in sorted((env or {}).items()):
        argv += ["--env", f"{key}={value}"]
    return [*argv, str(sif), *inner_argv]


# Host variables a server in a container still needs under --cleanenv (the GPUs a scheduler assigned).
PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "TZ")


def server_binds_env(arm: dict, paths: list, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Binds (same path inside as outside) and env for one arm's server: the model, tokenizer and trace folders, the
    arm's variant folder and any layer folders on the spec's PYTHONPATH, first on PYTHONPATH inside."""
    env = dict(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if arm.get("variant"):
        vdir = str(variant_dir(arm["variant"]).resolve())
        pythonpath = [vdir, *[p for p in pythonpath if p != vdir]]
        env["ATTNBENCH_VARIANT"] = arm["variant"]
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    for name in PASSED_ENV:
        if name in os.environ and name not in env:
            env[name] = os.environ[name]
    binds = sorted({str(Path(p).resolve()) for p in [*paths, *pythonpath] if p is not None})
    return binds, env
