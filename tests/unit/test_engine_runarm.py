"""run-arm's pieces that need no server: the backend check and where the model comes from."""

from pathlib import Path

from attnbench.engines.backend import check_backend
from attnbench.engines.runarm import keep_failed, model_paths


def parsed(logged=None, refused=()):
    return {"logged": logged, "refused": list(refused), "lines": [], "flash_attn_version": None}


def test_logged_backend_must_match():
    arm = {"backend": "XFORMERS", "expect_backend": "XFORMERS"}
    assert check_backend(arm, parsed("XFORMERS"), "cuda")["match"] is True
    assert check_backend(arm, parsed("FLASH_ATTN"), "cuda")["match"] is False


def test_silent_log_is_a_mismatch_on_gpu_but_not_on_cpu():
    arm = {"backend": "CPU_ATTN", "expect_backend": "CPU_ATTN"}
    assert check_backend(arm, parsed(None), "cuda")["match"] is False
    assert check_backend(arm, parsed(None), "cpu")["match"] is True


def test_refused_backend_is_a_mismatch_even_on_cpu():
    arm = {"backend": "FLASH_ATTN", "expect_backend": "FLASH_ATTN"}
    result = check_backend(arm, parsed(None, ["FLASH_ATTN"]), "cpu")
    assert result["match"] is False and result["refused"] == ["FLASH_ATTN"]


def test_engine_default_has_no_expectation():
    assert check_backend({"backend": None, "expect_backend": None}, parsed("FLASH_ATTN"), "cuda")["match"] is True


def test_expect_backend_overrides_requested():
    arm = {"backend": "XFORMERS", "expect_backend": "FLASH_ATTN"}
    result = check_backend(arm, parsed("FLASH_ATTN"), "cuda")
    assert result["match"] is True and result["requested"] == "XFORMERS"


def test_model_paths(tmp_path):
    synthetic = {"model": {"name": "m", "architecture": "a.json", "path": None, "tokenizer": None}}
    model, tok = model_paths(synthetic, tmp_path / "results" / "x")
    assert model == (tmp_path / "results/x/models/m/model").resolve() and tok.name == "tokenizer"
    real = {"model": {"name": "m", "architecture": None, "path": "/models/q", "tokenizer": None}}
    assert model_paths(real, tmp_path) == (Path("/models/q"), None)


def test_keep_failed_copies_the_run_folder(tmp_path):
    run = tmp_path / "runs" / "a" / "rep0"
    run.mkdir(parents=True)
    (run / "records.jsonl").write_text('{"x": 1}\n')
    dest = keep_failed(run, tmp_path, "a", 0)
    assert (dest / "records.jsonl").read_text() == '{"x": 1}\n'
    assert dest.parent == tmp_path / "failed"


def test_missing_api_key_fails_with_run_json(tmp_path, monkeypatch):
    """Fails before any server starts, and still leaves run.json saying why."""
    import json

    import pytest
    import yaml

    from attnbench.config import load_config
    from attnbench.engines.runarm import run_arm
    from attnbench.errors import AttnbenchError

    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "config" / "demo.yaml").read_text())
    cfg["sweep"]["api_key_env"] = "ATTNBENCH_TEST_UNSET_KEY"
    monkeypatch.delenv("ATTNBENCH_TEST_UNSET_KEY", raising=False)
    out = tmp_path / "runs" / "cpu_attn" / "rep0"
    with pytest.raises(AttnbenchError, match="ATTNBENCH_TEST_UNSET_KEY is not set"):
        run_arm(load_config(cfg), "cpu_attn", 0, out, tmp_path)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "ATTNBENCH_TEST_UNSET_KEY" in run["error"]
    assert list((tmp_path / "failed").glob("cpu_attn-rep0-*"))
