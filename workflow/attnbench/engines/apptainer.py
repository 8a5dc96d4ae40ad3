"""Apptainer engine images: one base image per engine line, a small layer per arm, and moving images to hosts
without network.

Base image (results/images/<line>/base.sif, shared by every experiment): a Debian root filesystem from
containers/base.def.in (`Bootstrap: debootstrap`, no %post: Apptainer's %post needs capabilities that unprivileged
and container hosts often lack), into which the engine line's hash-locked requirements are installed in a venv
(/opt/venv) through `apptainer exec --writable` on a sandbox, which is then squashed into the SIF. The wheels are
downloaded on the host first (`pip download --require-hashes`, kept in results/images/<line>/wheels/) and installed
with `--no-index`, so the image never reaches the network and a rebuild downloads nothing. base.json records the
SIF's sha256 and the lock's.

Arm layer (results/<exp>/images/<line>/<gpu type>/<arm>.json): what makes an arm's container differ from the base
(the backend-selecting environment, a variant folder such as containers/variants/xformers-cutlass bound in and put
first on PYTHONPATH) with checksums, and a digest of all of it: the pinned "container per backend and GPU type" of
the design, without a multi-gigabyte image per arm.

Offline hosts: `attnbench image export` writes the base image as checksummed parts with its records;
`attnbench image import` joins them on the other host, refuses an image whose checksum or lock differs from the
checkout's, and puts the files where the workflow looks, so Snakemake plans no build there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from attnbench.engines.backend import backend_selection
from attnbench.engines.lock import CONTAINERS_DIR, build_spec, load_lock, lock_entry, requirements_path, variant_dir
from attnbench.errors import ContainerError

BASE_DEF_TEMPLATE = CONTAINERS_DIR / "base.def.in"
INSTALL_SCRIPT = CONTAINERS_DIR / "install-engine.sh"
IMAGES_DIR = Path("results/images")  # relative to the workflow's working directory
BUILD_DIR_IN_IMAGE = "/opt/attnbench"
WHEELS_IN_IMAGE = "/opt/attnbench/wheels"
EXPORT_SCHEMA = 1
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


def base_recipe_digest(key: str, lock: dict | None = None) -> str:
    """sha256 over what decides a base image's content: the lock entry's apptainer section and the requirements
    lock's bytes. A changed value makes Snakemake rebuild the image (its params rerun trigger)."""
    entry = lock_entry(lock or load_lock(), key)
    text = json.dumps(build_spec(entry, key), sort_keys=True) + sha256_file(requirements_path(entry, key))
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


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


def _apptainer(args: list[str], what: str, log=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("apptainer")
    if exe is None:
        raise ContainerError(f"{what}: apptainer is not on PATH ({install_hint()})")
    env = {**os.environ, **apptainer_env()}
    proc = subprocess.run(
        [exe, *args], env=env, text=True, stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    )
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout or "").strip().splitlines()[-8:]) if log is None else f"see {log.name}"
        raise ContainerError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


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


# --- the base image ---------------------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror a base image is bootstrapped from: ATTNBENCH_DEBIAN_MIRROR, else the host's own (a Debian
    host's apt sources), else deb.debian.org."""
    if os.environ.get("ATTNBENCH_DEBIAN_MIRROR"):
        return os.environ["ATTNBENCH_DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text(encoding="utf-8").splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def render_base_def(key: str, entry: dict, mirror: str) -> str:
    spec = build_spec(entry, key)
    labels = {
        "org.attnbench.engine": key,
        "org.attnbench.engine-version": str(entry["version"]),
        "org.attnbench.requirements": spec["requirements"],
    }
    return string.Template(BASE_DEF_TEMPLATE.read_text(encoding="utf-8")).substitute(
        key=key,
        version=entry["version"],
        debian=spec.get("debian", "bookworm"),
        mirror=mirror,
        packages=" ".join(spec.get("packages", ["python3", "python3-venv"])),
        labels="\n".join(f"    {k} {v}" for k, v in sorted(labels.items())),
    )


def pip_download_argv(entry: dict, key: str, wheels: Path, python: str = sys.executable) -> list[str]:
    """Download exactly the locked wheels for the image's Python (not the host's), checking their hashes."""
    spec = build_spec(entry, key)
    pyver = str(entry.get("python", "3.11"))
    abi = "cp" + pyver.replace(".", "")
    argv = [
        python,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--python-version",
        pyver,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(wheels),
        "-r",
        str(requirements_path(entry, key)),
    ]
    # Every manylinux tag the image's glibc accepts (Debian 12: 2.36), as pip would on that system.
    glibc_minor = int(str(spec.get("glibc", "2.36")).split(".")[1])
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 4, -1)]
    for platform in [*platforms, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]:
        argv += ["--platform", platform]
    argv += ["--platform", "any"]
    return argv + list(spec.get("pip_args", []))


def build_base(
    key: str,
    lock: dict,
    *,
    images_dir: str | os.PathLike | None = None,
    log_path: Path | None = None,
    extra_pip_args: list[str] | None = None,
) -> dict:
    """Build results/images/<key>/base.sif from the lock entry and write base.json. Returns the record."""
    entry = lock_entry(lock, key)
    spec = build_spec(entry, key)
    req = requirements_path(entry, key)
    out_dir = base_dir(key, images_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sif, record_path = base_sif(key, images_dir), base_record_path(key, images_dir)
    wheels = out_dir / "wheels"
    definition = out_dir / "base.def"
    definition.write_text(render_base_def(key, entry, debian_mirror()), encoding="utf-8")
    log = (log_path or out_dir / "build.log").open("a", encoding="utf-8")
    times: dict[str, float] = {}

    def step(name: str, func) -> None:
        print(f"[image {key}] {name}", file=log, flush=True)
        t0 = time.monotonic()
        func()
        times[name] = round(time.monotonic() - t0, 1)
        print(f"[image {key}] {name}: {times[name]} s", file=log, flush=True)

    def download() -> None:
        wheels.mkdir(exist_ok=True)
        proc = subprocess.run(
            pip_download_argv(entry, key, wheels) + list(extra_pip_args or []),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            raise ContainerError(f"pip download of {req.name} failed (exit {proc.returncode}); see {log.name}")

    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=out_dir))
    sandbox = work / "sandbox"
    try:
        step("download wheels (hash-checked)", download)
        step(
            "bootstrap root filesystem",
            lambda: _apptainer(
                ["build", "--force", "--sandbox", str(sandbox), str(definition)], "apptainer build --sandbox", log
            ),
        )

        def install() -> None:
            target = sandbox / BUILD_DIR_IN_IMAGE.lstrip("/")
            (target / "wheels").mkdir(parents=True, exist_ok=True)
            shutil.copy2(req, target / "requirements.txt")
            shutil.copy2(INSTALL_SCRIPT, target / "install-engine.sh")
            (target / "trim.txt").write_text("\n".join(spec.get("trim", [])) + "\n", encoding="utf-8")
            _apptainer(
                [
                    "exec",
                    "--writable",
                    "--no-home",
                    "--cleanenv",
                    "--bind",
                    f"{wheels.resolve()}:{WHEELS_IN_IMAGE}:ro",
                    str(sandbox),
                    "sh",
                    f"{BUILD_DIR_IN_IMAGE}/install-engine.sh",
                ],
                "engine install in the image",
                log,
            )

        step("install locked requirements into /opt/venv", install)
        installed = _tree_bytes(sandbox)
        squash = [a for a in spec.get("squashfs", [])]
        args = (
            ["build", "--force"]
            + (["--mksquashfs-args", " ".join(squash)] if squash else [])
            + [str(sif), str(sandbox)]
        )
        step("squash into SIF", lambda: _apptainer(args, "apptainer build (SIF)", log))
        freeze = sandbox / BUILD_DIR_IN_IMAGE.lstrip("/") / "engine-lock.txt"
        engine_lock = out_dir / "engine-lock.txt"
        if freeze.is_file():
            shutil.copy2(freeze, engine_lock)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log.close()
    record = {
        "schema": 1,
        "key": key,
        "engine_version": str(entry["version"]),
        "runtime": "apptainer",
        "sif": sif.name,
        "sif_sha256": sha256_file(sif),
        "sif_bytes": sif.stat().st_size,
        "installed_bytes": installed,
        "requirements": spec["requirements"],
        "lock_sha256": sha256_file(req),
        "definition_sha256": sha256_file(definition),
        "recipe_sha256": base_recipe_digest(key, lock),
        "debian": spec.get("debian", "bookworm"),
        "mirror": debian_mirror(),
        "python": str(entry.get("python")),
        "trimmed": list(spec.get("trim", [])),
        "squashfs_args": squash,
        "apptainer": apptainer_version(),
        "built": datetime.now(timezone.utc).isoformat(),
        "build_seconds": times,
        "engine_lock_sha256": sha256_file(engine_lock) if engine_lock.is_file() else None,
    }
    _write_json(record_path, record)
    return record


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def check_base(key: str, lock: dict, images_dir: str | os.PathLike | None = None) -> dict:
    """The base record, after checking that it belongs to this checkout's lock and that the SIF is the one
    recorded. Raises ContainerError naming what differs."""
    record = read_json(base_record_path(key, images_dir))
    if record is None:
        raise ContainerError(
            f"{base_record_path(key, images_dir)} is missing or unreadable: build the base image "
            f"(snakemake ... or attnbench image build-base --key {key}) or import it"
        )
    want = sha256_file(requirements_path(lock_entry(lock, key), key))
    if record.get("lock_sha256") != want:
        raise ContainerError(
            f"image {key}: built from a lock with sha256 {record.get('lock_sha256')}, but this "
            f"checkout's lock has {want}; rebuild the image"
        )
    return record


# --- the arm layer ----------------------------------------------------------------------------------------------


def tree_digest(folder: Path) -> dict:
    """sha256 of every file under folder (sorted relative paths) and one digest over all of them."""
    files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    total = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in files.items()).encode()).hexdigest()
    return {"sha256": total, "files": files}


def layer_record(cfg: dict, arm: dict, gpu_type: str, base: dict) -> dict:
    """What an arm's container is: the base image (by sha256) plus the arm's backend environment and variant."""
    args, env = backend_selection(cfg["engine"]["version"], arm)
    variant = arm.get("variant")
    variant_files = tree_digest(variant_dir(variant)) if variant else None
    content = {
        "base_key": base["key"],
        "base_sif_sha256": base["sif_sha256"],
        "lock_sha256": base["lock_sha256"],
        "backend": arm.get("backend"),
        "backend_env": env,
        "backend_args": args,
        "variant": variant,
        "variant_sha256": variant_files["sha256"] if variant_files else None,
        "arm_env": {str(k): str(v) for k, v in (arm.get("env") or {}).items()},
        "gpu_type": gpu_type,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {
        "schema": 1,
        "experiment": cfg["experiment"],
        "arm": arm["name"],
        **content,
        "variant_files": variant_files["files"] if variant_files else {},
        "digest": f"sha256:{digest}",
    }


def write_layer(
    cfg: dict, arm: dict, gpu_type: str, out: Path, lock: dict, images_dir: str | os.PathLike | None = None
) -> dict:
    from attnbench.engines.gpu import check_compatible

    check_compatible(cfg, gpu_type, lock, [arm])
    base = check_base(cfg["engine"]["image"], lock, images_dir)
    record = layer_record(cfg, arm, gpu_type, base)
    _write_json(Path(out), record)
    return record


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


# --- moving an image to an offline host --------------------------------------------------------------------------


def export_image(key: str, out: Path, *, images_dir: str | os.PathLike | None = None, part_mib: int = 60) -> dict:
    """Write <out>/<key>.export.json and <out>/<key>.partNNN: the base SIF in parts of part_mib MiB, each with its
    sha256, plus base.json and base.versions.json."""
    record = read_json(base_record_path(key, images_dir))
    sif = base_sif(key, images_dir)
    if record is None or not sif.is_file():
        raise ContainerError(f"no built base image {sif} (with base.json) to export")
    if sha256_file(sif) != record["sif_sha256"]:
        raise ContainerError(f"{sif} does not match the sha256 in base.json; rebuild it before exporting")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    size = part_mib << 20
    with sif.open("rb") as fh:
        index = 0
        while chunk := fh.read(size):
            name = f"{key}.part{index:03d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
            index += 1
    manifest = {
        "schema": EXPORT_SCHEMA,
        "key": key,
        "base": record,
        "parts": parts,
        "versions": read_json(base_versions_path(key, images_dir)),
        "definition": (base_dir(key, images_dir) / "base.def").read_text(encoding="utf-8")
        if (base_dir(key, images_dir) / "base.def").is_file()
        else None,
    }
    _write_json(out / f"{key}.export.json", manifest)
    return manifest


def import_image(src: Path, lock: dict, *, key: str | None = None, images_dir: str | os.PathLike | None = None) -> dict:
    """Join an export's parts into results/images/<key>/base.sif after checking every part, the whole SIF and the
    lock against this checkout's; write base.json (and base.versions.json). Newer than every input of the build
    rule, so Snakemake plans no build."""
    src = Path(src)
    manifests = sorted(src.glob(f"{key or '*'}.export.json"))
    if len(manifests) != 1:
        raise ContainerError(f"{src}: expected one <key>.export.json, found {len(manifests)}")
    manifest = read_json(manifests[0])
    if not isinstance(manifest, dict) or manifest.get("schema") != EXPORT_SCHEMA or "base" not in manifest:
        raise ContainerError(f"{manifests[0]}: not an attnbench image export (schema {EXPORT_SCHEMA})")
    key = manifest["key"]
    record = manifest["base"]
    want_lock = sha256_file(requirements_path(lock_entry(lock, key), key))
    if record.get("lock_sha256") != want_lock:
        raise ContainerError(
            f"image {key} in {src} was built from a lock with sha256 {record.get('lock_sha256')}; "
            f"this checkout's lock has {want_lock}: refusing it"
        )
    out_dir = base_dir(key, images_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "base.sif.partial"
    whole = hashlib.sha256()
    with partial.open("wb") as fh:
        for part in manifest["parts"]:
            path = src / Path(part["name"]).name
            if not path.is_file():
                partial.unlink(missing_ok=True)
                raise ContainerError(f"{src}: part {part['name']} is missing")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                partial.unlink(missing_ok=True)
                raise ContainerError(f"{path}: sha256 differs from the export's; the part is damaged")
            whole.update(data)
            fh.write(data)
    if whole.hexdigest() != record["sif_sha256"]:
        partial.unlink(missing_ok=True)
        raise ContainerError(f"joined image sha256 {whole.hexdigest()} differs from base.json's {record['sif_sha256']}")
    partial.replace(base_sif(key, images_dir))
    if manifest.get("definition"):
        (out_dir / "base.def").write_text(manifest["definition"], encoding="utf-8")
    if manifest.get("versions"):
        _write_json(base_versions_path(key, images_dir), manifest["versions"])
    _write_json(base_record_path(key, images_dir), {**record, "imported": datetime.now(timezone.utc).isoformat()})
    return record


# --- CLI ------------------------------------------------------------------------------------------------------------


def _cmd_build_base(args: argparse.Namespace) -> int:
    record = build_base(
        args.key, load_lock(args.lock), images_dir=args.images_dir, log_path=Path(args.log) if args.log else None
    )
    print(f"built {base_sif(args.key, args.images_dir)}: {record['sif_bytes']} bytes, sha256 {record['sif_sha256']}")
    return 0


def _cmd_layer(args: argparse.Namespace) -> int:
    from attnbench.config import arm_by_name, load_config
    from attnbench.engines.gpu import resolve_gpu_type

    cfg = load_config(args.config)
    record = write_layer(
        cfg,
        arm_by_name(cfg, args.arm),
        resolve_gpu_type(cfg, args.gpu_type),
        Path(args.out),
        load_lock(args.lock),
        args.images_dir,
    )
    print(f"arm {args.arm}: base {record['base_sif_sha256'][:16]}..., layer {record['digest']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    manifest = export_image(args.key, Path(args.out), images_dir=args.images_dir, part_mib=args.part_mib)
    print(f"exported {args.key}: {len(manifest['parts'])} parts in {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    record = import_image(Path(args.src), load_lock(args.lock), key=args.key, images_dir=args.images_dir)
    print(f"imported {record['key']} into {base_sif(record['key'], args.images_dir)} (sha256 {record['sif_sha256']})")
    return 0


def register_image_commands(sub) -> None:
    """Subcommands of `attnbench image` for Apptainer base images (containers.register adds them)."""
    for name, func, helptext in (
        (
            "build-base",
            _cmd_build_base,
            "build an engine line's Apptainer base image from its hash-locked requirements",
        ),
        ("layer", _cmd_layer, "write an arm's layer record (base image sha256, backend env, variant checksums)"),
        ("export", _cmd_export, "write a built base image as checksummed parts for a host without network"),
        ("import", _cmd_import, "join and check exported parts into results/images/<line>/ (refuses another lock)"),
    ):
        c = sub.add_parser(name, help=helptext, description=helptext)
        c.add_argument("--lock", default=None, help="lock file (default: containers/lock.yaml)")
        c.add_argument("--images-dir", default=None, help=f"base images folder (default: {IMAGES_DIR})")
        if name in ("build-base", "export"):
            c.add_argument("--key", required=True, help="engine line, a key of containers/lock.yaml")
        if name == "build-base":
            c.add_argument("--log", default=None, help="build log (default: <images-dir>/<key>/build.log)")
        if name == "layer":
            c.add_argument("--config", required=True, help="experiment config YAML")
            c.add_argument("--arm", required=True, help="arm name")
            c.add_argument("--gpu-type", default=None, help="GPU type key (default: gpu.type; auto = detect)")
            c.add_argument("--out", required=True, help="layer record to write")
        if name == "export":
            c.add_argument("--out", required=True, help="folder for the parts and <key>.export.json")
            c.add_argument("--part-mib", type=int, default=60, help="part size in MiB [60]")
        if name == "import":
            c.add_argument("src", help="folder holding <key>.export.json and its parts")
            c.add_argument("--key", default=None, help="engine line (default: the one export in SRC)")
        c.set_defaults(func=func)
