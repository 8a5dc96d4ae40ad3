"""Secret redaction (every writer of argv, env and logs goes through provenance.redact) and run provenance."""

import json
from pathlib import Path

from attnbench.engines import provenance
from attnbench.engines.provenance import REDACTED, redact, redact_argv, redact_file, redact_text, secret_values

KEY = "sk-live-0123456789abcdefXYZ"
HF = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2"


def test_secret_named_env_values_are_blanked():
    env = {"VLLM_API_KEY": KEY, "HF_TOKEN": HF, "VLLM_CPU_KVCACHE_SPACE": "1", "MY_PASSWORD": "hunter22"}
    out = redact(env)
    assert out["VLLM_API_KEY"] == REDACTED and out["HF_TOKEN"] == REDACTED and out["MY_PASSWORD"] == REDACTED
    assert out["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_API_KEY"] == KEY  # a copy, the input is untouched


def test_secret_flags_in_argv():
    argv = ["python", "-m", "vllm", "--api-key", "abc12345", "--port", "8000", "--hf-token=xyz98765"]
    assert redact_argv(argv) == [
        "python",
        "-m",
        "vllm",
        "--api-key",
        REDACTED,
        "--port",
        "8000",
        f"--hf-token={REDACTED}",
    ]


def test_known_values_and_token_shapes_in_text():
    text = f"starting with key {KEY} and Authorization: Bearer abcdefgh12345678 and {HF}; custom s3cr3t-value"
    out = redact_text(text, ["s3cr3t-value"])
    for secret in (KEY, HF, "abcdefgh12345678", "s3cr3t-value"):
        assert secret not in out
    assert "Bearer ***" in out


def test_nested_structures():
    run = {"server": {"argv": ["x", "--api-key", KEY], "env": {"OPENAI_API_KEY": KEY}}, "note": f"used {KEY}"}
    assert KEY not in json.dumps(redact(run, [KEY]))


def test_secret_values_from_environment():
    values = secret_values({"HF_TOKEN": HF, "PATH": "/usr/bin", "SHORT_KEY": "ab"}, extra=["given-secret"])
    assert HF in values and "given-secret" in values
    assert "/usr/bin" not in values and "ab" not in values  # too short to blank safely


def test_redact_file(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(f"INFO api key {KEY}\nINFO ready\n")
    redact_file(log, [KEY])
    assert KEY not in log.read_text() and "INFO ready" in log.read_text()


def test_host_info_for_a_cpu_config():
    cfg = {"engine": {"device": "cpu"}, "gpu": {"type": "auto"}}
    host = provenance.host_info(cfg)
    assert host["gpu_type"].startswith("cpu-")
    assert len(host["hostname_hash"]) == 12 and host["gpus"] == []


def test_engine_versions_from_a_real_interpreter(tmp_path):
    """Any Python answers the snippet; packages it lacks come back as None."""
    import sys

    versions = provenance.engine_versions([sys.executable])
    assert set(versions) >= {"vllm", "torch", "xformers", "cuda"}
    missing = provenance.engine_versions([str(tmp_path / "no-python")])
    assert "error" in missing


def test_git_commit_of_a_copy_without_git_comes_from_the_environment(tmp_path):
    """An offline GPU host gets the working tree without .git; tests/gpu/h100.sh passes the commit in the env."""
    sha = "262774c" + "0" * 33
    assert provenance.git_commit(tmp_path, env={}) == {"commit": None, "dirty": None}
    got = provenance.git_commit(tmp_path, env={"ATTNBENCH_GIT_COMMIT": sha})
    assert got["commit"] == sha and got["dirty"] is False
    assert provenance.git_commit(tmp_path, env={"ATTNBENCH_GIT_COMMIT": f"{sha}-dirty\n"})["dirty"] is True
    # Anything that is not a full commit id is not recorded as one.
    assert provenance.git_commit(tmp_path, env={"ATTNBENCH_GIT_COMMIT": "main"})["commit"] is None
    # A real checkout wins over the variable.
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        assert provenance.git_commit(repo, env={"ATTNBENCH_GIT_COMMIT": sha})["commit"] != sha
