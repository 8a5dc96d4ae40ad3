"""The typed experiment: a frozen dataclass tree built once from a validated config (attnbench.config.load_config).

The schema (workflow/schemas/config.schema.yaml) is the one source of defaults: load_config fills them into the
config, and these classes carry no defaults of their own, so a field the schema does not fill is an error here, not a
second default. Four fields have no schema default on purpose and are marked where they are defined
(Workload.rates: a workload without rates runs no open loop; AnalysisSettings.reference and Reference.label: see the
schema's comment on `reference`; Experiment.report: a config without it keeps its report, and its bundle, as before).

Callers that hand the measuring functions a partial settings mapping (tests, the crosscheck, the bare CLI without a
config) get the schema's defaults for the rest through SweepSettings.for_caller / OpenLoopSettings.for_caller.
"""

from __future__ import annotations

import copy
import functools
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from types import UnionType
from typing import Any, TypeVar

from attnbench.config.schema import fill_defaults
from attnbench.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    """One request shape and the load levels it runs at."""

    name: str
    prompt_tokens: int
    output_tokens: int
    concurrency: tuple[int, ...]  # closed-loop levels (sweep.py)
    rates: tuple[float, ...] = ()  # open-loop target rates in requests/s; none: the workload runs no open loop


@dataclass(frozen=True)
class EngineSpec:
    version: str
    runtime: str
    requirements: str | None
    pip_args: tuple[str, ...]
    venv_dir: str | None
    python: str
    image: str | None
    allow_unpinned: bool
    device: str
    env: dict[str, Any]
    extra_args: tuple[str, ...]
    host: str
    startup_timeout_s: float
    stop_grace_s: float
    nice: int
    cpus: tuple[int, ...] | None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str | None
    path: str | None
    tokenizer: str | None
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    quantization: str | None
    expect_quantization: str | None
    trust_remote_code: bool


@dataclass(frozen=True)
class KernelExpectation:
    require: tuple[str, ...]
    forbid: tuple[str, ...]


@dataclass(frozen=True)
class Arm:
    name: str
    backend: str | None
    flash_attn_version: int | None
    variant: str | None
    env: dict[str, Any]
    server_args: tuple[str, ...]
    expect_backend: str | None  # check_cross_fields fills it with the backend
    allow_backend_mismatch: bool
    expect_kernels: KernelExpectation
    description: str
    article_backend: str | None


@dataclass(frozen=True)
class SweepSettings:
    """How each closed-loop level runs (the config's `sweep` section)."""

    api: str
    repeats: int
    warmup_requests: int
    requests_per_level: int | None
    waves_per_level: int
    min_requests_per_level: int
    min_level_seconds: float
    warmup_seconds: float
    ignore_eos: bool
    temperature: float
    system_prompt: str | None
    seed: int
    request_timeout_s: float
    latency_probe_gets: int
    api_key_env: str | None
    client_lag_limit_ms: float
    client_processes: int
    client_cpus: tuple[int, ...] | None

    @classmethod
    def for_caller(cls, given: SweepSettings | Mapping[str, Any] | None) -> SweepSettings:
        """Settings from a caller's partial mapping (keys it leaves out or sets to None take the schema's defaults;
        system_prompt None means no system message). Without an experiment config a level is sized by count only
        (BY_COUNT): the schema's time floors are an experiment's choice, and a direct caller asking for 4 requests
        means 4. Keys that are not settings are ignored, as they always were."""
        if isinstance(given, SweepSettings):
            return given
        chosen = {k: v for k, v in (given or {}).items() if v is not None or k == "system_prompt"}
        return build(cls, {**section_defaults("sweep"), **BY_COUNT, **chosen}, "sweep")


# Direct callers and the bare CLI measure each level by its count alone (see SweepSettings.for_caller).
BY_COUNT = {"min_level_seconds": 0.0, "warmup_seconds": 0.0}


@dataclass(frozen=True)
class OpenLoopSettings:
    """How each workload's `rates` run (the config's `open_loop` section; openloop.py)."""

    arrival: str
    burstiness: float
    requests_per_rate: int | None
    duration_s: float | None
    max_in_flight: int | None
    ttft_limit_ms: float | None
    tpot_limit_ms: float | None
    knee: bool
    knee_factor: float
    knee_max_rates: int

    @classmethod
    def for_caller(cls, given: OpenLoopSettings | Mapping[str, Any] | None) -> OpenLoopSettings:
        """Settings from a caller's partial mapping; keys left out or None take the schema's defaults."""
        if isinstance(given, OpenLoopSettings):
            return given
        chosen = {k: v for k, v in (given or {}).items() if v is not None}
        return build(cls, {**section_defaults("open_loop"), **chosen}, "open_loop")


@dataclass(frozen=True)
class ServerMetricsSettings:
    scrape: bool
    interval_s: float


@dataclass(frozen=True)
class KernelProbe:
    probe: bool
    probe_requests: int
    probe_output_tokens: int
    probe_workload: str | None


@dataclass(frozen=True)
class CrosscheckPoint:
    workload: str
    concurrency: int
    num_prompts: int | None
    warmup: int | None


@dataclass(frozen=True)
class CrosscheckSettings:
    points: tuple[CrosscheckPoint, ...]
    repeats: int
    runs: tuple[int, ...]
    warmup: int
    seed: int


@dataclass(frozen=True)
class Reference:
    file: str
    label: str | None = None  # the schema gives no default inside `reference` (see its comment there)


@dataclass(frozen=True)
class ArmPair:
    arm: str
    baseline: str


@dataclass(frozen=True)
class AnalysisSettings:
    weights_gb: float | None
    bandwidth_tb_s: float | None
    seed: int
    compare: tuple[ArmPair, ...]
    reference: Reference | None = None  # no schema default: Snakemake would fill one into a missing reference


@dataclass(frozen=True)
class Departure:
    what: str
    why: str


@dataclass(frozen=True)
class ReportSettings:
    departures: tuple[Departure, ...]  # from the article's command line (report.md lists them)


@dataclass(frozen=True)
class BundleSettings:
    sign_key: str | None = None  # rule bundle signs with it (attnbench bundle --sign-key)
    allowed_signers: str | None = None  # rule compare_received trusts only these (attnbench compare --allowed-signers)


@dataclass(frozen=True)
class GpuSettings:
    type: str
    count: int


@dataclass(frozen=True)
class SlurmGpuModel:
    gpu_model: str
    partition: str | None


@dataclass(frozen=True)
class SlurmRunJob:
    cpus_per_gpu: int
    cpus: int
    mem_mb: int
    runtime: int


@dataclass(frozen=True)
class SlurmBuildJob:
    cpus: int
    mem_mb: int
    runtime: int


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None
    account: str | None
    gpu_models: dict[str, SlurmGpuModel]
    run: SlurmRunJob
    build: SlurmBuildJob
    builds: str


@dataclass(frozen=True)
class Experiment:
    """One experiment, as its validated config says (load_experiment)."""

    experiment: str
    description: str
    engine: EngineSpec
    model: ModelSpec
    arms: tuple[Arm, ...]
    baseline: str  # check_cross_fields fills it with the first arm
    workloads: tuple[Workload, ...]  # in config order
    sweep: SweepSettings
    open_loop: OpenLoopSettings
    server_metrics: ServerMetricsSettings
    kernels: KernelProbe
    crosscheck: CrosscheckSettings
    analysis: AnalysisSettings
    gpu: GpuSettings
    slurm: SlurmSettings
    # No schema default: filled in, it would change every effective config and bundle that lists no departure.
    report: ReportSettings | None = None
    # No schema defaults either: left out, bundles are unsigned and the effective config stays as before.
    bundle: BundleSettings | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Experiment:
        """The tree of a config that load_config validated (defaults filled, cross-field rules checked)."""
        data = dict(cfg)
        data["workloads"] = [{"name": name, **spec} for name, spec in cfg["workloads"].items()]
        return build(cls, data, "")

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ConfigError(f"arm {name!r} is not in the config; allowed values: {', '.join(a.name for a in self.arms)}")

    def workload(self, name: str) -> Workload:
        for workload in self.workloads:
            if workload.name == name:
                return workload
        raise ConfigError(
            f"workload {name!r} is not in the config; allowed values: {', '.join(w.name for w in self.workloads)}"
        )


# --- building the tree ----------------------------------------------------------------------------------------------


@functools.cache
def _defaults_of(section: str) -> dict[str, Any]:
    return fill_defaults(section, {})


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of one top-level section (e.g. "sweep"), as a fresh dict."""
    return copy.deepcopy(_defaults_of(section))


def _where(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    """cls from a mapping whose keys are cls's fields (nested dataclasses, tuples and dicts of them converted).
    A field the mapping lacks is a ConfigError unless the class gives it a default. Keys that are not fields are
    left out: the schema already refused unknown keys, and a field added to the schema without a place here is
    caught by tests/unit/test_config_experiment.py, not by every run."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], _where(path, f.name))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{_where(path, f.name)}: missing (a config loaded with load_config has every field)")
    return cls(**values)


def _convert(kind: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if value is None:
        return None
    if is_dataclass(kind):
        return build(kind, value, path)
    if origin is tuple:
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if origin in (typing.Union, UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path) if len(inner) == 1 else value
    return value


__all__ = [
    "BY_COUNT",
    "AnalysisSettings",
    "Arm",
    "ArmPair",
    "CrosscheckPoint",
    "CrosscheckSettings",
    "Departure",
    "EngineSpec",
    "Experiment",
    "GpuSettings",
    "KernelExpectation",
    "KernelProbe",
    "ModelSpec",
    "OpenLoopSettings",
    "Reference",
    "ReportSettings",
    "ServerMetricsSettings",
    "SlurmBuildJob",
    "SlurmGpuModel",
    "SlurmRunJob",
    "SlurmSettings",
    "SweepSettings",
    "Workload",
    "build",
    "section_defaults",
]
