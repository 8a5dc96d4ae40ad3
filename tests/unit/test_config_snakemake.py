"""The workflow refuses a bad config before any job starts (snakemake -n), naming the field; every shipped config
plans cleanly. Dry runs only: nothing is started."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "config").glob("*.yaml") if "arms" in yaml.safe_load(p.read_text()))


def dry_run(configfile: Path, workdir: Path) -> subprocess.CompletedProcess:
    if not (workdir / "config").exists():
        (workdir / "config").symlink_to(ROOT / "config")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--cores",
        "1",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
    ]
    # Configs with runtime apptainer need an apptainer on PATH even to plan (the parse-time preflight); last on PATH,
    # the dry-run stand-in (tests/fakes/apptainer: answers --version only) serves where no real one is installed.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}:{ROOT / 'tests' / 'fakes'}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_plans(path, tmp_path):
    proc = dry_run(path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "serve_sweep" in proc.stdout


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c.update(baseline="nope"), "baseline: 'nope' is not an arm"),
        (lambda c: c["engine"].update(runtime="conda"), "engine.runtime: 'conda' is not allowed"),
        (lambda c: c["arms"].append(dict(c["arms"][0])), "must be unique"),
        (lambda c: c["sweep"].update(api="responses"), "sweep.api: 'responses' is not allowed"),
    ],
    ids=["baseline", "runtime", "duplicate-arm", "api"],
)
def test_bad_config_stops_the_workflow(edit, expected, tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    edit(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = dry_run(bad, tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.jsonl"))


def test_workflow_is_lint_and_snakefmt_clean():
    # Configs with runtime apptainer need an apptainer on PATH even to plan (the parse-time preflight); last on PATH,
    # the dry-run stand-in (tests/fakes/apptainer: answers --version only) serves where no real one is installed.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}:{ROOT / 'tests' / 'fakes'}"}
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", "config/demo.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert lint.returncode == 0, (lint.stdout + lint.stderr)[-3000:]
    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/rules/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert fmt.returncode == 0, (fmt.stdout + fmt.stderr)[-3000:]


def test_python_is_ruff_clean():
    # pyproject.toml's [tool.ruff] is the one style for the package, the tests and the container helpers.
    ruff = str(Path(sys.executable).parent / "ruff")
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [ruff, *args, "workflow", "tests", "containers"], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"ruff {' '.join(args)}: " + (proc.stdout + proc.stderr)[-3000:]
