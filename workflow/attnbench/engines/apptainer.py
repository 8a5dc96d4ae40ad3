"""Apptainer engine images: one base image per engine line and a small layer per arm.

Base image (results/images/<line>/base.sif, shared by every experiment): a Debian root filesystem from
containers/base.def.in (`Bootstrap: debootstrap`, no %post: Apptainer's %post needs capabilities that unprivileged
and container hosts often lack), into which the engine line's hash-locked requirements are installed in a venv
(/opt/venv) through `apptainer exec --writable` on a sandbox, which is then squashed into the SIF. The wheels are
downloaded on the host first (`pip download --require-hashes` into results/images/<line>/wheels/) and installed
with `--no-index`, so the image never reaches the network; once installed they are deleted (3.3 GB for vLLM 0.7.1)
before the squash, whose disk peak is the sandbox, Apptainer's copy of it and the SIF. Apptainer's scratch space
(APPTAINER_TMPDIR, unless set) is the build's own folder beside the image, not /tmp, which on many hosts is a small
tmpfs. base.json records the SIF's sha256 and the lock's.

Arm layer (results/<exp>/images/<line>/<gpu type>/<arm>.json): what makes an arm's container differ from the base
(the backend-selecting environment, a variant folder such as containers/variants/xformers-cutlass bound in and put
first on PYTHONPATH) with checksums, and a digest of all of it: the pinned "container per backend and GPU type" of
the design, without a multi-gigabyte image per arm.

Where the images live and the `apptainer exec` command line are apptainer_exec.py; export and import for hosts
without network are apptainer_transfer.py.
"""

from __future__ import annotations

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

from attnbench.engines.apptainer_exec import (
    apptainer_version,
    base_dir,
    base_record_path,
    base_sif,
    run_apptainer,
)
from attnbench.engines.backend import backend_selection
from attnbench.engines.compat import check_compatible
from attnbench.engines.files import read_json, sha256_file, tree_digest, write_json
from attnbench.engines.lock import (
    CONTAINERS_DIR,
    build_spec,
    load_lock,
    lock_entry,
    requirements_path,
    requirements_sha256,
    variant_dir,
)
from attnbench.errors import ContainerError

BASE_DEF_TEMPLATE = CONTAINERS_DIR / "base.def.in"
INSTALL_SCRIPT = CONTAINERS_DIR / "install-engine.sh"
BUILD_DIR_IN_IMAGE = "/opt/attnbench"
WHEELS_IN_IMAGE = "/opt/attnbench/wheels"


# --- the base image ----------------------------------------------------------------------------------------------


def base_recipe_digest(key: str, lock: dict | None = None) -> str:
    """sha256 over what decides a base image's content: the lock entry's apptainer section and the requirements
    lock's bytes. A changed value makes Snakemake rebuild the image (its params rerun trigger)."""
    entry = lock_entry(lock or load_lock(), key)
    text = json.dumps(build_spec(entry, key), sort_keys=True) + sha256_file(requirements_path(entry, key))
    return hashlib.sha256(text.encode()).hexdigest()


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

    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=out_dir)).resolve()
    sandbox = work / "sandbox"
    scratch = Path(os.environ.get("APPTAINER_TMPDIR") or work / "tmp")
    scratch.mkdir(parents=True, exist_ok=True)
    build_env = {"APPTAINER_TMPDIR": str(scratch)}
    try:
        step("download wheels (hash-checked)", download)
        step(
            "bootstrap root filesystem",
            lambda: run_apptainer(
                ["build", "--force", "--sandbox", str(sandbox), str(definition)],
                "apptainer build --sandbox",
                log,
                env=build_env,
            ),
        )

        def install() -> None:
            target = sandbox / BUILD_DIR_IN_IMAGE.lstrip("/")
            (target / "wheels").mkdir(parents=True, exist_ok=True)
            shutil.copy2(req, target / "requirements.txt")
            shutil.copy2(INSTALL_SCRIPT, target / "install-engine.sh")
            (target / "trim.txt").write_text("\n".join(spec.get("trim", [])) + "\n", encoding="utf-8")
            run_apptainer(
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
        shutil.rmtree(wheels, ignore_errors=True)
        installed = _tree_bytes(sandbox)
        check_squash_space(installed, scratch, out_dir)
        squash = [a for a in spec.get("squashfs", [])]
        args = (
            ["build", "--force"]
            + (["--mksquashfs-args", " ".join(squash)] if squash else [])
            + [str(sif), str(sandbox)]
        )
        step("squash into SIF", lambda: run_apptainer(args, "apptainer build (SIF)", log, env=build_env))
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
    write_json(record_path, record)
    return record


# The SIF of a squashed sandbox, measured: 0.41 of the installed bytes for vLLM 0.7.1 (zstd -9), 0.5 for the CPU
# engine. The check asks for half, so a build that passes it has room to finish.
SIF_FRACTION = 0.5


def check_squash_space(installed: int, scratch: Path, out_dir: Path) -> None:
    """Fail before the squash, with the numbers, where the disk cannot hold Apptainer's copy of the sandbox (in
    `scratch`) and the SIF (in `out_dir`); Apptainer itself would stop late with an unhelpful exit 255."""
    gb = 1e9
    need = {scratch: installed, out_dir: int(installed * SIF_FRACTION)}
    if os.stat(scratch).st_dev == os.stat(out_dir).st_dev:
        need = {out_dir: installed + int(installed * SIF_FRACTION)}
    for folder, bytes_needed in need.items():
        free = shutil.disk_usage(folder).free
        if free < bytes_needed:
            raise ContainerError(
                f"not enough free disk to squash the image: about {bytes_needed / gb:.1f} GB needed in {folder} "
                f"(Apptainer's copy of the {installed / gb:.1f} GB sandbox and the SIF), {free / gb:.1f} GB free; "
                "free space there or set APPTAINER_TMPDIR to a folder on a larger disk"
            )


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
    want = requirements_sha256(lock, key)
    if record.get("lock_sha256") != want:
        raise ContainerError(
            f"image {key}: built from a lock with sha256 {record.get('lock_sha256')}, but this "
            f"checkout's lock has {want}; rebuild the image"
        )
    return record


# --- the arm layer ----------------------------------------------------------------------------------------------


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
    check_compatible(cfg, gpu_type, lock, [arm])
    base = check_base(cfg["engine"]["image"], lock, images_dir)
    record = layer_record(cfg, arm, gpu_type, base)
    write_json(Path(out), record)
    return record
