"""GPU type keys from real nvidia-smi output lines, model-size estimates, and the (engine, arm, model, GPU) check."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.config import load_config
from attnbench.engines import compat, gpu, gputype
from attnbench.engines.lock import load_lock
from attnbench.errors import CompatibilityError

ROOT = Path(__file__).resolve().parents[2]

# `nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader` as real cards print it.
SMI_LINES = {
    "NVIDIA GeForce RTX 3070 Laptop GPU, 8.6, 8192 MiB, 566.07": "rtx3070-laptop-sm86-8g",
    "NVIDIA H100 80GB HBM3, 9.0, 81559 MiB, 550.54.15": "h100-80gb-hbm3-sm90-80g",
    "NVIDIA A100-SXM4-40GB, 8.0, 40960 MiB, 535.104.05": "a100-sxm4-40gb-sm80-40g",
    "NVIDIA A100-SXM4-80GB, 8.0, 81920 MiB, 535.104.05": "a100-sxm4-80gb-sm80-80g",
    "NVIDIA GeForce RTX 4090, 8.9, 24564 MiB, 560.35.03": "rtx4090-sm89-24g",
    "NVIDIA GeForce RTX 5090, 12.0, 32607 MiB, 570.86.16": "rtx5090-sm120-32g",
    "Tesla T4, 7.5, 15360 MiB, 535.183.01": "t4-sm75-15g",
    "NVIDIA B200, 10.0, 183359 MiB, 570.124.06": "b200-sm100-179g",
}


@pytest.mark.parametrize("line,key", SMI_LINES.items())
def test_gpu_type_key_from_nvidia_smi(line, key):
    (info,) = gpu.parse_nvidia_smi(line)
    assert info.key == key
    assert gputype.parse_gpu_type(key).compute_cap == info.compute_cap


def test_multi_gpu_output_keeps_order_and_driver():
    text = "\n".join(list(SMI_LINES)[:2]) + "\n"
    gpus = gpu.parse_nvidia_smi(text)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].driver == "550.54.15"
    assert gpu.host_gpu_type(gpus) == "rtx3070-laptop-sm86-8g"  # GPU 0 names the host


def test_no_gpu_gives_cpu_key():
    assert gpu.host_gpu_type([]) == gputype.cpu_key()
    assert gputype.cpu_key("x86_64") == "cpu-x86_64"
    assert gputype.parse_gpu_type("cpu-x86_64").is_cpu


@pytest.mark.parametrize("bad", ["rtx3070", "rtx3070-sm86", "RTX3070-sm86-8g", "h100-sm9.0-80g", ""])
def test_bad_gpu_type_key_names_the_field(bad):
    with pytest.raises(CompatibilityError, match="gpu.type"):
        gputype.parse_gpu_type(bad)


def test_bad_nvidia_smi_line_is_an_error():
    with pytest.raises(Exception, match="MiB"):
        gpu.parse_nvidia_smi("NVIDIA H100, 9.0, 80 GB")


def test_detect_falls_back_to_nvidia_smi_on_path(tmp_path, monkeypatch):
    """No NVML here (no driver), so detection must use the nvidia-smi it finds on PATH: a stand-in script that prints
    what a real H100 prints, and fails unless asked for exactly the query attnbench documents."""
    fake = tmp_path / "nvidia-smi"
    expected = " ".join(gpu.NVIDIA_SMI_QUERY)
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$*" = "{expected}" ] || {{ echo "unexpected args: $*" >&2; exit 9; }}\n'
        "echo 'NVIDIA H100 80GB HBM3, 9.0, 81559 MiB, 550.54.15'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpu, "_detect_nvml", lambda: None)
    assert gpu.host_gpu_type() == "h100-80gb-hbm3-sm90-80g"


def test_weight_estimates_match_known_checkpoints():
    awq = json.loads((ROOT / "config/models/qwen2.5-7b-instruct-awq.json").read_text())
    fp = json.loads((ROOT / "config/models/qwen2.5-7b-instruct.json").read_text())
    # Qwen2.5-7B-Instruct: 7.62e9 parameters (15.2 GB in 16 bit); the AWQ checkpoint's safetensors total ~5.6 GB.
    assert 15.0e9 < compat.estimate_weight_bytes(fp, "float16") < 15.5e9
    assert 5.2e9 < compat.estimate_weight_bytes(awq, "float16") < 5.9e9


# --- compatibility -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lock():
    return load_lock()


def article(**engine):
    cfg = load_config(ROOT / "config" / "article.yaml")
    cfg["engine"].update(engine)
    return cfg


def test_article_pair_on_the_articles_laptop_card_is_fine(lock):
    compat.check_compatible(article(), "rtx3070-laptop-sm86-8g", lock)
    compat.check_compatible(article(), "h100-80gb-hbm3-sm90-80g", lock)


def test_vllm_071_on_blackwell_names_both_and_the_alternative(lock):
    with pytest.raises(CompatibilityError) as err:
        compat.check_compatible(article(), "rtx5090-sm120-32g", lock)
    msg = str(err.value)
    assert "vllm-0.7.1" in msg and "rtx5090-sm120-32g" in msg and "sm_120" in msg
    assert "vllm-0.26.0" in msg  # what to choose instead
    assert "sm_70..sm_90" in msg


def test_flash_attn_needs_ampere(lock):
    problems = compat.compatibility_problems(
        article(), {"name": "flash_attn", "backend": "FLASH_ATTN"}, "t4-sm75-15g", lock
    )
    assert len(problems) == 1
    assert "FLASH_ATTN needs sm_80+" in problems[0] and "t4-sm75-15g" in problems[0]
    assert compat.compatibility_problems(article(), {"name": "x", "backend": "XFORMERS"}, "t4-sm75-15g", lock) == []


def test_8gib_card_needs_the_awq_model(lock):
    cfg = article()
    cfg["model"].update(architecture=str(ROOT / "config/models/qwen2.5-7b-instruct.json"), quantization=None)
    problems = compat.compatibility_problems(cfg, cfg["arms"][0], "rtx3070-laptop-sm86-8g", lock)
    assert len(problems) == 1 and "AWQ" in problems[0] and "14.2 GiB" in problems[0]
    assert compat.compatibility_problems(cfg, cfg["arms"][0], "a100-sxm4-40gb-sm80-40g", lock) == []


def test_cuda_engine_on_a_cpu_host_points_at_the_demo(lock):
    with pytest.raises(CompatibilityError, match="demo.yaml"):
        compat.check_compatible(article(), "cpu-x86_64", lock)


def test_variant_must_exist_for_the_engine_line(lock):
    cfg = article(image="vllm-0.26.0", version="0.26.0")
    arm = {"name": "nofa2", "backend": "FLASH_ATTN", "variant": "xformers-cutlass"}
    (problem,) = compat.compatibility_problems(cfg, arm, "h100-80gb-hbm3-sm90-80g", lock)
    assert "xformers-cutlass" in problem and "vllm-0.7.1" in problem


def test_gpu_check_cli_fails_before_building_with_one_line(tmp_path):
    """`attnbench gpu check` is what the build rule runs first: exit 2 and one line naming engine and GPU."""
    cfg = tmp_path / "c.yaml"
    data = (ROOT / "config" / "article.yaml").read_text().replace("type: auto", "type: rtx5090-sm120-32g")
    cfg.write_text(data)
    proc = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "gpu", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "vllm-0.7.1" in proc.stderr and "rtx5090-sm120-32g" in proc.stderr
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnbench.cli",
            "gpu",
            "check",
            "--config",
            str(cfg),
            "--gpu-type",
            "h100-80gb-hbm3-sm90-80g",
            "--stamp",
            str(tmp_path / "ok"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok").read_text().strip() == "h100-80gb-hbm3-sm90-80g"


def test_gpu_detect_cli_prints_cpu_key_here_or_a_gpu_key():
    proc = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "gpu", "detect", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    gputype.parse_gpu_type(out["gpu_type"])
    assert out["gpu_type"].startswith("cpu-") == (out["gpus"] == [])
