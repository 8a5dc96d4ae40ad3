"""The bad-config corpus: each case is config/demo.yaml with one mistake a new user makes. config.preflight (the
Snakefile's first step, before Snakemake validates or plans anything) must reject every one with a single line
naming the field; a few of them also go through a real `snakemake -n`, which must stop with at most 3 lines after
its profile banner, run no job and write nothing under results/."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from attnbench import config
from attnbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[new] = node.pop(last)

    return edit


def _drop(path: str) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return edit


def _text(find: str, replace: str) -> str:
    text = (ROOT / "config" / "demo.yaml").read_text()
    assert find in text
    return text.replace(find, replace, 1)


# (id, edit of the parsed config, or YAML text; what the one line must contain)
CASES: list[tuple[str, Callable[[dict], None] | str, str]] = [
    ("misspelt top key", _rename("experiment", "experimnt"), "'experimnt' (did you mean 'experiment'?)"),
    (
        "misspelt sweep key",
        _rename("sweep.repeats", "repeets"),
        "sweep: unknown field 'repeets' (did you mean 'repeats'",
    ),
    (
        "misspelt engine key",
        _rename("engine.runtime", "runtme"),
        "engine: unknown field 'runtme' (did you mean 'runtime'",
    ),
    (
        "misspelt arm key",
        _rename("arms.0.backend", "backnd"),
        "arms[0]: unknown field 'backnd' (did you mean 'backend'",
    ),
    ("misspelt workload key", _rename("workloads.short.prompt_tokens", "prompt_token"), "workloads.short"),
    ("runtime not allowed", _set("engine.runtime", "conda"), "engine.runtime: 'conda' is not allowed; allowed values"),
    ("device near miss", _set("engine.device", "cpus"), "engine.device: 'cpus' is not allowed (did you mean 'cpu'?)"),
    ("api near miss", _set("sweep.api", "chats"), "sweep.api: 'chats' is not allowed (did you mean 'chat'?)"),
    ("dtype near miss", _set("model.dtype", "bfloat61"), "model.dtype: 'bfloat61' is not allowed (did you mean"),
    ("temperature NaN", _text("temperature: 1.0", "temperature: .nan"), "sweep.temperature: nan is not a finite"),
    ("timeout infinite", _text("request_timeout_s: 300", "request_timeout_s: .inf"), "sweep.request_timeout_s"),
    (
        "memory utilization NaN",
        _text("gpu_memory_utilization: 0.3", "gpu_memory_utilization: .NaN"),
        "model.gpu_memory_utilization",
    ),
    (
        "top key given twice",
        _text("experiment: demo", "experiment: demo\nexperiment: demo2"),
        ": field 'experiment' is given twice",
    ),
    ("nested key given twice", _text("  repeats: 2", "  repeats: 2\n  repeats: 3"), "field 'repeats' is given twice"),
    (
        "model path missing",
        lambda c: (c["model"].pop("architecture"), c["model"].update(path="/nonexistent/model")),
        "model.path: /nonexistent/model is not a folder",
    ),
    (
        "architecture missing",
        _set("model.architecture", "config/models/nope.json"),
        "model.architecture: config/models/nope.json does not exist",
    ),
    ("architecture and path", _set("model.path", "/tmp"), "model: give exactly one of"),
    (
        "fewer requests than concurrency",
        _set("sweep.requests_per_level", 2),
        "sweep.requests_per_level: 2 is fewer than workloads.short.concurrency's highest level 4",
    ),
    (
        "max_model_len beyond the model",
        _set("model.max_model_len", 100000),
        "model.max_model_len: 100000 exceeds the model's own maximum 8192",
    ),
    (
        "workload beyond max_model_len",
        _set("workloads.long.prompt_tokens", 4000),
        "model.max_model_len: 2048 is shorter than the longest workload",
    ),
    ("baseline not an arm", _set("baseline", "cpu"), "baseline: 'cpu' is not an arm"),
    ("duplicate arm names", lambda c: c["arms"].append(copy.deepcopy(c["arms"][0])), "arms[2].name: 'cpu_attn'"),
    ("no arms", _set("arms", []), "arms: [] is out of range"),
    ("concurrency as a string", _set("workloads.short.concurrency", "1,2"), "workloads.short.concurrency"),
    ("concurrency empty", _set("workloads.short.concurrency", []), "workloads.short.concurrency"),
    ("repeats zero", _set("sweep.repeats", 0), "sweep.repeats: 0 is out of range"),
    ("repeats as a word", _set("sweep.repeats", "two"), "sweep.repeats: 'two' has the wrong type"),
    ("experiment name with a slash", _set("experiment", "a/b"), "experiment: 'a/b' does not match"),
    (
        "flash_attn_version on old vLLM",
        lambda c: (
            c["engine"].update(version="0.7.1"),
            c["arms"][0].update(backend="FLASH_ATTN", flash_attn_version=2),
        ),
        "arms[0].flash_attn_version: only vLLM >= 0.11",
    ),
    ("flash_attn_version 5", _set("arms.0.flash_attn_version", 5), "arms[0].flash_attn_version: 5 is not allowed"),
    ("probe workload unknown", _set("kernels.probe_workload", "medium"), "kernels.probe_workload: 'medium'"),
    ("YAML syntax error", _text("concurrency: [1, 2, 4]}", "concurrency: [1, 2, 4}"), "not valid YAML"),
    ("version not a version", _set("engine.version", "latest"), "engine.version: 'latest' does not match"),
    ("venv without requirements", _drop("engine.requirements"), "engine.requirements: runtime venv needs"),
    ("arm name with a space", _set("arms.0.name", "cpu attn"), "arms[0].name: 'cpu attn' does not match"),
    ("warmup negative", _set("sweep.warmup_requests", -1), "sweep.warmup_requests: -1 is out of range"),
]


def _write(tmp_path: Path, case: Callable[[dict], None] | str) -> Path:
    path = tmp_path / "bad.yaml"
    if isinstance(case, str):
        path.write_text(case)
    else:
        cfg = copy.deepcopy(DEMO)
        case(cfg)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _preflight(path: Path) -> None:
    """What the Snakefile does with a --configfile: parse (Snakemake's own loader), then attnbench's checks."""
    config.preflight([path], config.read_yaml(path))


def test_corpus_size():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_the_demo_itself_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    _preflight(_write(tmp_path, lambda c: None))


@pytest.mark.parametrize("name, case, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_config_gets_one_line_naming_the_field(name, case, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative model paths resolve as the workflow resolves them
    with pytest.raises(ConfigError) as info:
        _preflight(_write(tmp_path, case))
    message = str(info.value)
    assert "\n" not in message and expected in message, message


SNAKEMAKE_CASES = [
    "misspelt sweep key",
    "temperature NaN",
    "nested key given twice",
    "model path missing",
    "fewer requests than concurrency",
]


@pytest.mark.parametrize("name", SNAKEMAKE_CASES)
def test_workflow_stops_before_any_job_with_at_most_three_lines(name, tmp_path):
    _, case, expected = next(c for c in CASES if c[0] == name)
    work = tmp_path / "w"
    work.mkdir()
    (work / "config").symlink_to(ROOT / "config")
    bad = _write(tmp_path, case)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(bad),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = [
        ln
        for ln in (proc.stdout + proc.stderr).splitlines()
        if ln.strip() and not ln.startswith("Using workflow specific profile")
    ]
    assert len(lines) <= 3 and any(expected in ln for ln in lines), lines
    assert not (work / "results").exists()  # nothing planned, nothing written


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "--base-url", "127.0.0.1:8000"], "--base-url '127.0.0.1:8000': expected http:// or https://"),
        (["sweep", "--base-url", "ftp://127.0.0.1:8000"], "--base-url 'ftp://127.0.0.1:8000'"),
        (["sweep", "--base-url", "http://127.0.0.1:99999"], "the port is not a number"),
        (["sweep", "--requests", "0"], "--requests 0: must be a finite number >= 1"),
        (["sweep", "--warmup", "-1"], "--warmup -1"),
        (["sweep", "--timeout", "nan"], "--timeout nan"),
        (["sweep", "--output", "FILE"], "is an existing file"),
        (["crosscheck", "--concurrency", "0"], "--concurrency 0"),
        (["crosscheck", "--base-url", "localhost"], "--base-url 'localhost'"),
    ],
)
def test_cli_options_are_checked_before_any_server_is_contacted(argv, expected, tmp_path, capsys):
    from attnbench.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = [str(a_file) if a == "FILE" else a for a in argv]
    defaults = {
        "sweep": [
            "--base-url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--workload",
            "s=4:4",
            "--concurrency",
            "1",
            "--output",
            str(tmp_path / "out"),
        ],
        "crosscheck": [
            "--base-url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--tokenizer",
            "t",
            "--engine-python",
            sys.executable,
            "--output",
            str(tmp_path / "out"),
        ],
    }[argv[0]]
    given = set(argv[1::2])
    for i in range(0, len(defaults), 2):  # argparse keeps the last value: put the case's options after defaults
        if defaults[i] not in given:
            argv += defaults[i : i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing written, no server contacted (port 9 would refuse)
