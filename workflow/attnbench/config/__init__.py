"""Experiment configs: load a YAML file, validate it against workflow/schemas/config.schema.yaml, fill defaults,
and check the rules that span several fields (which JSON-schema cannot say clearly). load_experiment gives the
typed tree of the result (experiment.py); the dict stays for the modules that have not moved to it yet.

Every error is a ConfigError whose message names the field (as a path such as `arms[1].backend`) and, where the
schema has them, the allowed values. The Snakefile validates with snakemake.utils.validate against the same schema
and then calls `check_cross_fields`, so a bad config fails before any job starts.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from attnbench.config.experiment import Experiment, OpenLoopSettings, SweepSettings, Workload
from attnbench.config.schema import SCHEMA_PATH, fill_defaults, load_schema, with_defaults
from attnbench.errors import ConfigError

# The typed tree and the schema's helpers, importable from here.
__all__ = ["SCHEMA_PATH", "Experiment", "OpenLoopSettings", "SweepSettings", "Workload", "fill_defaults", "load_schema"]

# vLLM 0.11 replaced the VLLM_ATTENTION_BACKEND variable by --attention-backend / --attention-config.
ATTENTION_FLAG_VERSION = (0, 11)


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


def _near(word: object, choices, n: int = 1) -> list[str]:
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: jsonschema.ValidationError) -> str:
    """One line: the field path, what is wrong, the allowed keys or values, and a near miss when there is one."""
    where = field_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "enum":
        allowed = error.validator_value
        near = _near(error.instance, allowed)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        allowed_list = ", ".join(map(repr, allowed))
        return f"{where}: {_short_repr(error.instance)} is not allowed{hint}; allowed values: {allowed_list}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed), key=str) if isinstance(error.instance, dict) else []
        if allowed:
            parts = [f"{k!r}" + (f" (did you mean {near[0]!r}?)" if (near := _near(k, allowed)) else "") for k in extra]
            return f"{where}: unknown field {', '.join(parts)}; allowed fields: {', '.join(allowed)}"
        return f"{where}: unknown field(s) {', '.join(map(repr, extra))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "type":
        return f"{where}: {_short_repr(error.instance)} has the wrong type; expected {error.validator_value}"
    if error.validator == "pattern":
        return f"{where}: {_short_repr(error.instance)} does not match {error.validator_value!r}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems"):
        return f"{where}: {_short_repr(error.instance)} is out of range ({error.validator} {error.validator_value})"
    return f"{where}: {error.message if len(error.message) <= 160 else error.message[:157] + '...'}"


def schema_problems(cfg: dict) -> list[str]:
    """Every schema violation as one line (defaults filled into cfg on the way), the most relevant first."""
    validator_cls = with_defaults(jsonschema.Draft202012Validator)
    errors = list(validator_cls(load_schema()).iter_errors(cfg))
    lines: list[str] = []
    for err in sorted(errors, key=jsonschema.exceptions.relevance):
        line = _describe(jsonschema.exceptions.best_match([err]))  # oneOf/anyOf: the branch naming the deepest field
        if line not in lines:
            lines.append(line)
    return lines


def non_finite(value: Any, path: tuple = ()) -> list[str]:
    """YAML's .nan and .inf pass a schema's `type: number`; no field of ours means them."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{field_path(list(path))}: {value!r} is not a finite number"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite(v, (*path, i))]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _construct_unique(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: field {key!r} is given twice in one "
                f"mapping (first on line {seen[key] + 1}); keep one"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)


def read_yaml(path: Path) -> Any:
    """A config file's content; ConfigError naming the file (and line) when it cannot be read, is not YAML, or
    gives a key twice."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            loader = _UniqueKeyLoader(fh)
            loader.name = str(path)
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


def validate_schema(cfg: dict) -> dict:
    """Fill defaults in place and validate; raises ConfigError with the most relevant problem (and a count of the
    rest) on one line."""
    problems = schema_problems(cfg) or non_finite(cfg)
    if problems:
        raise ConfigError(summarize(problems))
    return cfg


def summarize(problems: list[str]) -> str:
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more problem{'s' * (more > 1)}: fix this one first)" if more else "")


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
    if runtime == "docker" and engine.get("cpus"):
        raise ConfigError(
            "engine.cpus: not for runtime docker (a container's cpuset would also hold the engine's worker); "
            "use runtime venv, native or apptainer, or null"
        )

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
    fixed = cfg["sweep"].get("requests_per_level")
    for name, w in cfg["workloads"].items():
        if fixed is not None and fixed < max(w["concurrency"]):
            raise ConfigError(
                f"sweep.requests_per_level: {fixed} is fewer than workloads.{name}.concurrency's highest level "
                f"{max(w['concurrency'])}; a level needs at least as many requests as its concurrency"
            )
    probe_workload = cfg["kernels"].get("probe_workload")

    if probe_workload is not None and probe_workload not in cfg["workloads"]:
        raise ConfigError(
            f"kernels.probe_workload: {probe_workload!r} is not a workload; "
            f"allowed values: {', '.join(cfg['workloads'])}"
        )
    return cfg


def check_model_files(cfg: dict) -> None:
    """The model the config names exists (paths relative to the working directory, as the workflow reads them),
    and neither max_model_len nor the longest workload exceeds what the model itself allows
    (max_position_embeddings of its config.json). Not part of load_config: commands that only read results (bundle,
    report) run where the model may not be."""
    model = cfg["model"]
    longest = max(w["prompt_tokens"] + w["output_tokens"] for w in cfg["workloads"].values())
    if model.get("path") is not None:
        if not Path(model["path"]).is_dir():
            raise ConfigError(f"model.path: {model['path']} is not a folder (give a local model folder)")
        arch_file, field = Path(model["path"]) / "config.json", "model.path"
    else:
        arch_file, field = Path(model["architecture"]), "model.architecture"
        if not arch_file.is_file():
            raise ConfigError(
                f"model.architecture: {arch_file} does not exist (an HF config.json, as in config/models/)"
            )
    if not arch_file.is_file():
        return
    try:
        arch = json.loads(arch_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{field}: {arch_file} is not a readable config.json ({exc})") from None
    limit = arch.get("max_position_embeddings") if isinstance(arch, dict) else None
    if isinstance(limit, int) and not isinstance(limit, bool):
        if model["max_model_len"] > limit:
            raise ConfigError(
                f"model.max_model_len: {model['max_model_len']} exceeds the model's own maximum "
                f"{limit} (max_position_embeddings in {arch_file})"
            )
        if longest > limit:
            raise ConfigError(
                f"workloads: prompt + output = {longest} tokens exceeds the model's own maximum "
                f"{limit} (max_position_embeddings in {arch_file})"
            )


def preflight(configfiles: list, cfg: dict) -> None:
    """The workflow's first check, before Snakemake's own schema validation can print its long dump: the config
    files without keys given twice, then every schema and cross-field rule; ConfigError with one line."""
    for path in configfiles:
        read_yaml(Path(path))
    trial = copy.deepcopy(cfg)  # Snakemake validates (and fills defaults into) the real one next
    validate_schema(trial)
    check_cross_fields(trial)
    check_model_files(trial)


def check_cli_inputs(
    *,
    base_url: str | None = None,
    minimum: dict[str, tuple[float | None, float]] | None = None,
    output: str | None = None,
) -> None:
    """Options of commands that talk to a server, checked before any connection is made: the URL's scheme and
    host, numbers against their least allowed value ({"--requests": (value, 1)}), and an output folder that is not
    an existing file. ConfigError naming the option."""
    if base_url is not None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"--base-url {base_url!r}: expected http:// or https:// and a host, e.g. http://127.0.0.1:8000"
            )
        try:
            parts.port  # noqa: B018  (raises for a port that is not a number in range)
        except ValueError:
            raise ConfigError(f"--base-url {base_url!r}: the port is not a number from 1 to 65535") from None
    for option, (value, least) in (minimum or {}).items():
        if value is not None and (not math.isfinite(value) or value < least):
            raise ConfigError(f"{option} {value}: must be a finite number >= {least:g}")
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        raise ConfigError(f"--output {output}: is an existing file; give a folder")


def load_config(path_or_dict: str | Path | dict) -> dict:
    """Validated config with schema defaults filled in (a copy when given a dict)."""
    if isinstance(path_or_dict, dict):
        cfg = copy.deepcopy(path_or_dict)
    else:
        cfg = read_yaml(Path(path_or_dict))
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


def load_experiment(path_or_dict: str | Path | dict) -> Experiment:
    """The typed experiment (config/experiment.py) of a config file or mapping, validated as load_config does."""
    return Experiment.from_config(load_config(path_or_dict))


def workloads_of(cfg: dict | Experiment) -> list[Workload]:
    """The workloads of a validated config (or experiment), in config order."""
    exp = cfg if isinstance(cfg, Experiment) else Experiment.from_config(cfg)
    return list(exp.workloads)
