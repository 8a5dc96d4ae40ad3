"""The typed experiment (attnbench.config.experiment): built from the validated config, the schema its only source
of defaults, and every schema field given a place in the tree."""

import dataclasses
import typing
from pathlib import Path

import pytest

from attnbench.config import load_config, load_experiment, load_schema, workloads_of
from attnbench.config.experiment import (
    BY_COUNT,
    Experiment,
    OpenLoopSettings,
    SweepSettings,
    Workload,
    section_defaults,
)
from attnbench.errors import ConfigError
from attnbench.paths import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "config").glob("*.yaml"))


def _object_schemas(schema: dict, node: dict, cls: type, path: str):
    """(path, the schema's property names, cls's field names) for every object the tree mirrors."""
    props = node.get("properties", {})
    names = {f.name for f in dataclasses.fields(cls)}
    yield path, set(props), names
    hints = typing.get_type_hints(cls)
    for key, sub in props.items():
        if "$ref" in sub:
            sub = {**schema["$defs"][sub["$ref"].rsplit("/", 1)[1]], **sub}
        inner = [a for a in (hints.get(key), *typing.get_args(hints.get(key))) if dataclasses.is_dataclass(a)]
        if inner and "properties" in sub:
            yield from _object_schemas(schema, sub, inner[0], f"{path}.{key}")


def test_every_schema_field_has_a_place_in_the_tree():
    schema = load_schema()
    seen = list(_object_schemas(schema, schema, Experiment, "(top)"))
    assert len(seen) > 10  # the walk reached the nested sections
    for path, props, names in seen:
        assert props == names - {"name"} or props == names, path  # Workload and arms: name is the key or a field
    workload = schema["$defs"]["workload"]["properties"]
    assert set(workload) | {"name"} == {f.name for f in dataclasses.fields(Workload)}


def test_the_tree_carries_no_defaults_of_its_own():
    """The schema is the one source of defaults; the few fields it leaves without one on purpose are listed."""
    defaulted = set()
    for cls in [Experiment, *{t for t in _classes(Experiment)}]:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                defaulted.add(f"{cls.__name__}.{f.name}")
    assert defaulted == {
        "Workload.rates",
        "AnalysisSettings.reference",
        "Reference.label",
        "Experiment.report",
        "Experiment.bundle",  # no schema default on purpose: unsigned bundles, effective configs as before
        "BundleSettings.sign_key",
        "BundleSettings.allowed_signers",
    }


def _classes(cls):
    for kind in typing.get_type_hints(cls).values():
        for a in (kind, *typing.get_args(kind), *(x for y in typing.get_args(kind) for x in typing.get_args(y))):
            if dataclasses.is_dataclass(a):
                yield a
                yield from _classes(a)


def _as_yaml(value):
    """A settings tree as YAML gives it (the tree keeps lists as tuples, so that it stays frozen)."""
    if isinstance(value, dict):
        return {k: _as_yaml(v) for k, v in value.items()}
    return [_as_yaml(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_tree_says_what_the_config_says(path: Path):
    cfg = load_config(path)
    exp = Experiment.from_config(cfg)
    assert exp.experiment == cfg["experiment"] and exp.baseline == cfg["baseline"]
    assert _as_yaml(dataclasses.asdict(exp.sweep)) == cfg["sweep"]
    assert _as_yaml(dataclasses.asdict(exp.open_loop)) == cfg["open_loop"]
    assert [a.name for a in exp.arms] == [a["name"] for a in cfg["arms"]]
    assert [a.expect_backend for a in exp.arms] == [a["expect_backend"] for a in cfg["arms"]]
    assert exp.engine.version == cfg["engine"]["version"] and exp.model.max_model_len == cfg["model"]["max_model_len"]
    assert [(w.name, w.prompt_tokens, list(w.concurrency)) for w in workloads_of(cfg)] == [
        (name, w["prompt_tokens"], w["concurrency"]) for name, w in cfg["workloads"].items()
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.sweep.seed = 1  # type: ignore[misc]


def test_load_experiment_refuses_what_load_config_refuses(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO_ROOT / "config" / "demo.yaml").read_text().replace("sweep:", "sweeep:", 1))
    with pytest.raises(ConfigError, match="sweeep"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="arm 'nope' is not in the config"):
        load_experiment(REPO_ROOT / "config" / "demo.yaml").arm("nope")


def test_caller_settings_take_the_schema_defaults():
    schema = load_schema()["properties"]
    expected = {k: v["default"] for k, v in schema["sweep"]["properties"].items()}
    assert section_defaults("sweep") == expected
    given = SweepSettings.for_caller({"warmup_requests": 1, "seed": None, "system_prompt": None, "unknown": 3})
    assert dataclasses.asdict(given) == {**expected, **BY_COUNT, "warmup_requests": 1, "system_prompt": None}
    assert SweepSettings.for_caller(given) is given
    ol_expected = {k: v["default"] for k, v in schema["open_loop"]["properties"].items()}
    assert dataclasses.asdict(OpenLoopSettings.for_caller({"knee": None, "duration_s": 30})) == {
        **ol_expected,
        "duration_s": 30,
    }
