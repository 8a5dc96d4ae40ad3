# The engine environment. Only runtime venv builds something here; native uses a preinstalled interpreter and the
# container runtimes get their images from containers.smk.


rule engine_venv:
    input:
        requirements=config["engine"].get("requirements") or [],
    output:
        lock=ENGINE_LOCK,
    log:
        f"{EXP_DIR}/logs/engine_venv.log",
    conda:
        "../envs/attnbench.yaml"
    resources:
        # SLURM request when slurm.builds is cluster (docs/cluster.md)
        **build_resources(config),
    params:
        venv=str(engine_venv_dir(config)),
        version=config["engine"]["version"],
        pip_args=" ".join(f"--pip-arg={a}" for a in config["engine"]["pip_args"]),
    shell:
        "attnbench engine build-venv --requirements {input.requirements} --venv {params.venv}"
        " --lock {output.lock} --expect-version {params.version} {params.pip_args} > {log} 2>&1"
