"""SLURM resources per job (attnbench.engines.cluster) from validated experiment configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnbench.config import load_config
from attnbench.engines.cluster import build_resources, remote_rules, run_resources, target_gpu_type
from attnbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
H100 = "h100-80gb-hbm3-sm90-80g"
A100 = "a100-sxm4-80gb-sm80-80g"


def config(name: str, **overrides) -> dict:
    raw = yaml.safe_load((ROOT / "config" / name).read_text(encoding="utf-8"))
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value}
    return load_config(raw)


def site(**extra) -> dict:
    return {
        "gpu_models": {H100: {"gpu_model": "h100", "partition": "gpu-h100"}, A100: {"gpu_model": "a100"}},
        "partition": "gpu",
        **extra,
    }


def test_cpu_demo_asks_for_cpus_and_no_gpu():
    res = run_resources(config("demo.yaml"))
    assert "gpu" not in res and "gpu_model" not in res and "cpus_per_gpu" not in res
    assert res == {"cpus_per_task": 2, "mem_mb": 6000, "runtime": 60}


def test_gpu_run_without_mapping_asks_for_any_gpu():
    res = run_resources(config("article.yaml"))
    assert res["gpu"] == 1 and "gpu_model" not in res and "slurm_partition" not in res
    assert res["cpus_per_gpu"] == 8 and "cpus_per_task" not in res


def test_fixed_gpu_type_picks_model_and_its_partition():
    cfg = config("article.yaml", slurm=site(account="lab"), gpu={"type": H100, "count": 2})
    assert run_resources(cfg) == {
        "slurm_partition": "gpu-h100",
        "slurm_account": "lab",
        "gpu": 2,
        "gpu_model": "h100",
        "cpus_per_gpu": 8,
        "mem_mb": 32000,
        "runtime": 240,
    }


def test_type_without_own_partition_uses_the_default_partition():
    res = run_resources(config("article.yaml", slurm=site()), gpu_type=A100)
    assert res["gpu_model"] == "a100" and res["slurm_partition"] == "gpu"


def test_auto_with_one_mapping_targets_it_and_with_several_any():
    one = config("article.yaml", slurm={"gpu_models": {A100: {"gpu_model": "a100"}}})
    assert target_gpu_type(one) == A100 and run_resources(one)["gpu_model"] == "a100"
    several = config("article.yaml", slurm=site())
    assert target_gpu_type(several) is None and "gpu_model" not in run_resources(several)


def test_unmapped_gpu_type_is_a_config_error_naming_the_known_ones():
    cfg = config("article.yaml", slurm=site(), gpu={"type": "rtx3070-laptop-sm86-8g"})
    with pytest.raises(ConfigError, match=r"slurm.gpu_models.*rtx3070-laptop-sm86-8g.*a100-sxm4"):
        run_resources(cfg)


def test_bad_gpu_model_name_is_rejected_by_the_schema():
    with pytest.raises(ConfigError, match="gpu_model"):
        config("article.yaml", slurm={"gpu_models": {H100: {"gpu_model": "h100 --exclusive"}}})


def test_builds_stay_local_unless_configured():
    assert remote_rules(config("demo.yaml")) == {"serve_sweep"}
    cfg = config("demo.yaml", slurm={"builds": "cluster", "build": {"cpus": 8}})
    assert remote_rules(cfg) == {"serve_sweep", "engine_venv", "build_image", "engine_versions"}
    assert build_resources(cfg) == {"cpus_per_task": 8, "mem_mb": 16000, "runtime": 120}
