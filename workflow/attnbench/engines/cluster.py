"""What each Snakemake job asks a SLURM cluster for, from the experiment config's `slurm` section.

The rules pass these dicts as their `resources:`; snakemake-executor-plugin-slurm turns them into sbatch options
(`gpu` + `gpu_model` -> `--gpus=<model>:<n>`, `slurm_partition` -> `-p`, `slurm_account` -> `-A`,
`cpus_per_gpu`/`cpus_per_task`, `mem_mb` -> `--mem`, `runtime` (minutes) -> `-t`). Local runs ignore them.

GPU types are attnbench's keys (gputype.py, e.g. h100-80gb-hbm3-sm90-80g); a cluster names its GPU models its own way
(h100, nvidia_h100_80gb_hbm3...), so `slurm.gpu_models` maps one to the other and can route each type to its own
partition. docs/cluster.md explains the whole profile.
"""

from __future__ import annotations

from attnbench.errors import ConfigError

# The only rules worth a SLURM job: the server+sweep runs, and the builds when `slurm.builds: cluster` (compute
# nodes often lack internet, so builds stay on the submit host by default). Every other rule only reads results
# and writes small files, and runs on the submit host.
RUN_RULES = ("serve_sweep",)
BUILD_RULES = ("engine_venv", "build_image", "engine_versions")


def _common(cfg: dict, partition: str | None = None) -> dict:
    slurm = cfg["slurm"]
    out = {}
    partition = partition or slurm["partition"]
    if partition:
        out["slurm_partition"] = partition
    if slurm["account"]:
        out["slurm_account"] = slurm["account"]
    return out


def target_gpu_type(cfg: dict, gpu_type: str | None = None) -> str | None:
    """The GPU type a run job must land on: the one named (a wildcard), else a fixed `gpu.type`, else the only
    entry of `slurm.gpu_models`; None means any GPU the partition has (the run records which it got)."""
    if gpu_type and gpu_type != "auto":
        return gpu_type
    fixed = cfg["gpu"]["type"]
    if fixed != "auto":
        return fixed
    models = cfg["slurm"]["gpu_models"]
    return next(iter(models)) if len(models) == 1 else None


def run_resources(cfg: dict, gpu_type: str | None = None) -> dict:
    """Resources of one server+sweep job (`attnbench run-arm`): one node, `gpu.count` GPUs of the target type
    (none for the CPU engine), the CPUs, memory and wall time of `slurm.run`."""
    run = cfg["slurm"]["run"]
    if cfg["engine"]["device"] == "cpu":
        return {**_common(cfg), "cpus_per_task": run["cpus"], "mem_mb": run["mem_mb"], "runtime": run["runtime"]}
    target = target_gpu_type(cfg, gpu_type)
    models = cfg["slurm"]["gpu_models"]
    if target is not None and target not in models and models:
        raise ConfigError(
            f"slurm.gpu_models: no entry for GPU type {target!r} (known: {', '.join(sorted(models))}); "
            "add `{target}: {gpu_model: <the cluster's GPU model name>}`"
        )
    mapping = models.get(target, {}) if target else {}
    out = {**_common(cfg, mapping.get("partition")), "gpu": cfg["gpu"]["count"]}
    if mapping.get("gpu_model"):
        out["gpu_model"] = mapping["gpu_model"]
    out.update(cpus_per_gpu=run["cpus_per_gpu"], mem_mb=run["mem_mb"], runtime=run["runtime"])
    return out


def build_resources(cfg: dict) -> dict:
    """Resources of an engine venv or image build when `slurm.builds: cluster` (no GPU needed)."""
    build = cfg["slurm"]["build"]
    return {**_common(cfg), "cpus_per_task": build["cpus"], "mem_mb": build["mem_mb"], "runtime": build["runtime"]}


def remote_rules(cfg: dict) -> set[str]:
    """Rules a cluster executor submits as jobs; the Snakefile declares all others `localrules`."""
    return set(RUN_RULES) | (set(BUILD_RULES) if cfg["slurm"]["builds"] == "cluster" else set())
