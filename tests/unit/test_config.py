"""Experiment configs: the shipped ones load, defaults are filled, and each kind of bad config fails with a
message that names the field (and the allowed values where there is a fixed set)."""

import copy
from pathlib import Path

import pytest
import yaml

from attnbench.config import arm_by_name, load_config, version_tuple
from attnbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "config").glob("*.yaml") if "arms" in yaml.safe_load(p.read_text()))


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg["baseline"] in [a["name"] for a in cfg["arms"]]
    for arm in cfg["arms"]:
        assert "expect_kernels" in arm and "env" in arm


def test_defaults_are_filled_per_object(demo):
    del demo["sweep"]
    demo["arms"][1].pop("env")
    cfg = load_config(demo)
    assert cfg["sweep"]["repeats"] == 1
    assert cfg["sweep"]["api"] == "chat"
    assert cfg["sweep"]["requests_per_level"] is None
    assert cfg["kernels"]["probe"] is False
    # mutable defaults are copies, not one shared object
    cfg["arms"][0]["expect_kernels"]["require"].append("x")
    assert cfg["arms"][1]["expect_kernels"]["require"] == []


def test_expect_backend_defaults_to_backend(demo):
    cfg = load_config(demo)
    assert cfg["arms"][0]["expect_backend"] == "CPU_ATTN"


def test_load_config_does_not_modify_its_argument(demo):
    before = copy.deepcopy(demo)
    load_config(demo)
    assert demo == before


def test_baseline_defaults_to_first_arm(demo):
    del demo["baseline"]
    assert load_config(demo)["baseline"] == "cpu_attn"


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    return str(info.value)


def test_bad_runtime_names_field_and_allowed_values(demo):
    demo["engine"]["runtime"] = "conda"
    msg = _error(demo)
    assert "engine.runtime" in msg and "'venv'" in msg and "'apptainer'" in msg


def test_bad_api_names_field(demo):
    demo["sweep"]["api"] = "responses"
    msg = _error(demo)
    assert "sweep.api" in msg and "'chat'" in msg and "'completions'" in msg


def test_bad_device(demo):
    demo["engine"]["device"] = "rocm"
    assert "engine.device" in _error(demo)


def test_unknown_field_is_named_with_allowed_fields(demo):
    demo["sweep"]["repeat"] = 3  # typo of repeats
    msg = _error(demo)
    assert "sweep" in msg and "repeat" in msg and "repeats" in msg


def test_unknown_arm_field(demo):
    demo["arms"][0]["backnd"] = "X"
    msg = _error(demo)
    assert "arms[0]" in msg and "backnd" in msg


def test_wrong_type_names_path(demo):
    demo["workloads"]["short"]["concurrency"] = [1, "two"]
    msg = _error(demo)
    assert "workloads.short.concurrency[1]" in msg


def test_missing_required(demo):
    del demo["engine"]["runtime"]
    msg = _error(demo)
    assert "engine" in msg and "runtime" in msg


def test_baseline_must_name_an_arm(demo):
    demo["baseline"] = "nope"
    msg = _error(demo)
    assert "baseline" in msg and "cpu_attn_nosplit" in msg


def test_arm_names_unique(demo):
    demo["arms"][1]["name"] = demo["arms"][0]["name"]
    msg = _error(demo)
    assert "arms[1].name" in msg and "unique" in msg


@pytest.mark.parametrize("name", ["a/b", "../x", "with space", ""])
def test_arm_names_filename_safe(demo, name):
    demo["arms"][0]["name"] = name
    assert "arms[0].name" in _error(demo)


def test_model_needs_exactly_one_source(demo):
    demo["model"]["path"] = "/models/x"
    assert "model" in _error(demo) and "exactly one" in _error(demo)
    del demo["model"]["path"]
    del demo["model"]["architecture"]
    assert "exactly one" in _error(demo)


def test_flash_attn_version_needs_new_vllm(demo):
    demo["engine"]["version"] = "0.7.1"
    demo["arms"][0]["backend"] = "FLASH_ATTN"
    demo["arms"][0]["flash_attn_version"] = 2
    msg = _error(demo)
    assert "arms[0].flash_attn_version" in msg and "0.11" in msg
    demo["engine"]["version"] = "0.11.0"
    load_config(demo)


def test_flash_attn_version_only_for_flash_attn(demo):
    demo["arms"][0]["flash_attn_version"] = 3
    assert "FLASH_ATTN" in _error(demo)


def test_flash_attn_version_values(demo):
    demo["engine"]["version"] = "0.11.0"
    demo["arms"][0]["backend"] = "FLASH_ATTN"
    demo["arms"][0]["flash_attn_version"] = 5
    assert "arms[0].flash_attn_version" in _error(demo)


def test_runtime_needs_its_fields(demo):
    demo["engine"]["requirements"] = None
    assert "engine.requirements" in _error(demo)
    demo["engine"]["runtime"] = "apptainer"
    assert "engine.image" in _error(demo)


def test_engine_cpus_is_refused_for_docker_and_checked_for_shape(demo):
    demo["engine"].update(runtime="docker", image="vllm-cpu-0.32.0")
    assert _error(demo).startswith("engine.cpus: not for runtime docker")
    demo["engine"].update(runtime="venv", cpus=[1, 1])
    assert "engine.cpus" in _error(demo)  # the schema: unique CPU ids
    demo["engine"]["cpus"] = None
    demo["sweep"]["client_cpus"] = [-1]
    assert "sweep.client_cpus" in _error(demo)


def test_workload_must_fit_max_model_len(demo):
    demo["model"]["max_model_len"] = 500
    msg = _error(demo)
    assert "model.max_model_len" in msg and "1064" in msg


def test_probe_workload_must_exist(demo):
    demo["kernels"] = {"probe": True, "probe_workload": "medium"}
    msg = _error(demo)
    assert "kernels.probe_workload" in msg and "short" in msg


def test_api_key_env_is_a_name_not_a_key(demo):
    demo["sweep"]["api_key_env"] = "sk-abc def"
    assert "sweep.api_key_env" in _error(demo)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("experiment: [unclosed\n")
    assert "not valid YAML" in _error(path)
    assert "cannot read" in _error(tmp_path / "missing.yaml")


def test_arm_by_name(demo):
    cfg = load_config(demo)
    assert arm_by_name(cfg, "cpu_attn_nosplit")["env"] == {"VLLM_CPU_ATTN_SPLIT_KV": "0"}
    with pytest.raises(ConfigError, match="allowed values: cpu_attn, cpu_attn_nosplit"):
        arm_by_name(cfg, "x")


@pytest.mark.parametrize(
    "text,expected",
    [("0.7.1", (0, 7, 1)), ("0.11.0rc1", (0, 11, 0)), ("0.32.0+cpu", (0, 32, 0)), ("1.0", (1, 0))],
)
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected
