"""The workflow refuses a bad config before any job starts (snakemake -n), naming the field; every shipped config
plans cleanly. Dry runs only: nothing is started."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from signkeys import ed25519_key

ROOT = Path(__file__).resolve().parents[2]
# The experiment configs, and the workflow's test config that CI runs (.test/, the Snakemake catalog's convention).
SHIPPED = sorted(p for p in (ROOT / "config").glob("*.yaml") if "arms" in yaml.safe_load(p.read_text())) + [
    ROOT / ".test" / "config" / "config.yaml"
]


def dry_run(configfile: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config").exists():
        (workdir / "config").symlink_to(ROOT / "config")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        *args,
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


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
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
    assert not (tmp_path / "results").exists()


def test_dry_run_writes_nothing(tmp_path):
    """`snakemake -n` on a fresh working directory plans every job and leaves no file behind but Snakemake's own
    .snakemake/ folder: the effective config is a job's output (effective_config), not written while parsing."""
    proc = dry_run(ROOT / "config" / "demo.yaml", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective_config" in proc.stdout and "serve_sweep" in proc.stdout
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".snakemake", "config"], left
    assert not (tmp_path / "results").exists()


@pytest.fixture
def ssh_key(tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    return ed25519_key(tmp_path / "keys", "peer@example")


def config_with(tmp_path: Path, **sections) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg.update(sections)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def shell_lines(proc: subprocess.CompletedProcess, command: str) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith(f"Shell command: attnbench {command} ")]


def test_signing_settings_reach_the_bundle_and_compare_commands(tmp_path, ssh_key):
    key, allowed = ssh_key
    work = tmp_path / "work"
    (work / "received" / "peer").mkdir(parents=True)
    (work / "received" / "peer" / "bundle-x.tar.gz").write_bytes(b"")  # planned only, never opened
    signed = config_with(tmp_path, bundle={"sign_key": str(key), "allowed_signers": str(allowed)})
    proc = dry_run(signed, work, "-p", "all", "results/comparison/peer/comparison.md")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (bundle,) = shell_lines(proc, "bundle")
    assert f"--sign-key {key} --verify" in bundle
    (compare,) = shell_lines(proc, "compare")
    assert f"--allowed-signers {allowed} --out" in compare

    # Left out: unsigned bundle, no trust list (the commands as before).
    plain = dry_run(ROOT / "config" / "demo.yaml", work, "-p", "all", "results/comparison/peer/comparison.md")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "--sign-key" not in shell_lines(plain, "bundle")[0]
    assert "--allowed-signers" not in shell_lines(plain, "compare")[0]


@pytest.mark.parametrize("setting", ["sign_key", "allowed_signers"])
def test_missing_signing_file_stops_the_dry_run_in_one_line(tmp_path, setting):
    bad = config_with(tmp_path, bundle={setting: str(tmp_path / "nothing-here")})
    proc = dry_run(bad, tmp_path / "work")
    assert proc.returncode != 0
    (line,) = [e for e in (proc.stdout + proc.stderr).splitlines() if e.startswith("bad config:")]
    assert line == f"bad config: bundle.{setting}: {tmp_path / 'nothing-here'} is not a file"
    assert "Job stats" not in proc.stdout + proc.stderr


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


def test_catalog_files_describe_the_workflow():
    """The Snakemake workflow catalog's conventions: .snakemake-workflow-catalog.yml names the mandatory flag and the
    report; config/README.md names every shipped config and every top-level key of the schema."""
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert catalog["mandatory-flags"]["flags"] == "--use-singularity"
    assert catalog["report"] is True and catalog["software-stack-deployment"]["apptainer"] is True
    readme = (ROOT / "config" / "README.md").read_text()
    for path in SHIPPED:
        assert f"`{path.name}`" in readme or f"`../{path.relative_to(ROOT)}`" in readme, path
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for key in schema["properties"]:
        assert f"`{key}`" in readme, key
