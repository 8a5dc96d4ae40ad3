"""Experiment configs: load a YAML file, validate it against workflow/schemas/config.schema.yaml, fill defaults,
and check the rules that span several fields (which JSON-schema cannot say clearly).

Every error is a ConfigError whose message names the field (as a path such as `arms[1].backend`) and, where the
schema has them, the allowed values. The Snakefile validates with snakemake.utils.validate against the same schema
and then calls `check_cross_fields`, so a bad config fails before any job starts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from attnbench.errors import ConfigError

# attnbench/schemas links to workflow/schemas in a checkout and is a copy (package data) in an installed package.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"

# vLLM 0.11 replaced the VLLM_ATTENTION_BACKEND variable by --attention-backend / --attention-config.
ATTENTION_FLAG_VERSION = (0, 11)


def load_schema() -> dict:
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.7.1' -> (0, 7, 1); '0.11.0rc1' -> (0, 11, 0). Only the leading numeric parts count."""
    parts = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    if not parts:
        raise ConfigError(f"engine.version: {version!r} is not a version number such as 0.7.1")
    return tuple(parts)


def field_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _with_defaults(validator_class):
    """A validator that writes each property's schema default into the instance before validating it, so nested
    objects get their defaults too (the recipe from the jsonschema FAQ, with copies of mutable defaults)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    where = field_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed values: {', '.join(map(repr, error.validator_value))}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f"; allowed fields: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown field(s) {', '.join(extra)}{hint}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "type":
        return f"{where}: {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "pattern":
        return f"{where}: {error.instance!r} does not match {error.validator_value!r}"
    return f"{where}: {error.message}"


def validate_schema(cfg: dict) -> dict:
    """Fill defaults in place and validate; raises ConfigError for the first (most relevant) error."""
    schema = load_schema()
    validator_cls = _with_defaults(jsonschema.Draft202012Validator)
    errors = list(validator_cls(schema).iter_errors(cfg))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    return cfg


def check_cross_fields(cfg: dict) -> dict:
    """Rules spanning several fields; also fills the defaults that depend on other fields (baseline, expect_backend).
    Expects a schema-valid config with defaults filled."""
    names = [arm["name"] for arm in cfg["arms"]]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"arms[{i}].name: {name!r} is used by more than one arm; arm names must be unique")
        seen.add(name)

    if cfg.get("baseline") is None:
        cfg["baseline"] = names[0]
    elif cfg["baseline"] not in names:
        raise ConfigError(f"baseline: {cfg['baseline']!r} is not an arm; allowed values: {', '.join(names)}")

    engine, model = cfg["engine"], cfg["model"]
    version = version_tuple(engine["version"])
    runtime = engine["runtime"]
    if runtime == "venv" and not engine.get("requirements"):
        raise ConfigError("engine.requirements: runtime venv needs a pinned requirements file")
    if runtime in ("docker", "apptainer") and not engine.get("image"):
        raise ConfigError(f"engine.image: runtime {runtime} needs an image key from containers/lock.yaml")

    if (model.get("architecture") is None) == (model.get("path") is None):
        raise ConfigError("model: give exactly one of model.architecture (synthetic, dummy weights) or model.path")

    for i, arm in enumerate(cfg["arms"]):
        if arm.get("flash_attn_version") is not None:
            if version < ATTENTION_FLAG_VERSION:
                raise ConfigError(
                    f"arms[{i}].flash_attn_version: only vLLM >= 0.11 takes a FlashAttention version "
                    f"(engine.version is {engine['version']}); allowed values here: null"
                )
            if arm.get("backend") not in (None, "FLASH_ATTN"):
                raise ConfigError(
                    f"arms[{i}].flash_attn_version: only applies to backend FLASH_ATTN (backend is {arm['backend']})"
                )
        if arm.get("expect_backend") is None:
            arm["expect_backend"] = arm.get("backend")

    longest = max(w["prompt_tokens"] + w["output_tokens"] for w in cfg["workloads"].values())
    if longest > model["max_model_len"]:
        raise ConfigError(
            f"model.max_model_len: {model['max_model_len']} is shorter than the longest workload "
            f"(prompt + output = {longest} tokens)"
        )
    probe_workload = cfg["kernels"].get("probe_workload")
    if probe_workload is not None and probe_workload not in cfg["workloads"]:
        raise ConfigError(
            f"kernels.probe_workload: {probe_workload!r} is not a workload; "
            f"allowed values: {', '.join(cfg['workloads'])}"
        )
    return cfg


def load_config(path_or_dict: str | Path | dict) -> dict:
    """Validated config with schema defaults filled in (a copy when given a dict)."""
    if isinstance(path_or_dict, dict):
        cfg = copy.deepcopy(path_or_dict)
    else:
        path = Path(path_or_dict)
        try:
            with path.open(encoding="utf-8") as fh:
                cfg = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError("(top level): the config must be a mapping of fields")
    validate_schema(cfg)
    return check_cross_fields(cfg)


def arm_by_name(cfg: dict, name: str) -> dict:
    for arm in cfg["arms"]:
        if arm["name"] == name:
            return arm
    raise ConfigError(f"arm {name!r} is not in the config; allowed values: {', '.join(a['name'] for a in cfg['arms'])}")


def engine_id(cfg: dict) -> str:
    """Folder name of a venv engine, shared by experiments that pin the same requirements file."""
    return Path(cfg["engine"]["requirements"]).stem if cfg["engine"].get("requirements") else "engine"


def engine_venv_dir(cfg: dict) -> Path:
    """The engine venv (a folder with bin/python), shared by the experiments that pin the same requirements."""
    venv = cfg["engine"].get("venv_dir")
    return Path(venv) if venv else Path("results") / "engines" / engine_id(cfg) / "venv"


def workloads_of(cfg: dict) -> list[Any]:
    """The config's workloads as sweep.Workload objects, in config order."""
    from attnbench.sweep import Workload

    return [
        Workload(name=name, prompt_tokens=w["prompt_tokens"], output_tokens=w["output_tokens"],
                 concurrency=list(w["concurrency"]))
        for name, w in cfg["workloads"].items()
    ]
