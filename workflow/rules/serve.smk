# One server start per (arm, repeat): start it, sweep every workload against it, stop it. With a single server
# resource (profiles/default) runs never overlap, whatever --cores says.


rule serve_sweep:
    input:
        model_inputs(),
        engine_inputs(),
        lambda wildcards: IMAGE_FILES[wildcards.arm],  # containers.smk
        # ancient: a rewritten effective config does not redo finished runs (config.smk; arm_fingerprint does)
        config=ancient(CONFIG_FILE),
    output:
        records=f"{RUN_DIR}/records.jsonl",
        levels=f"{RUN_DIR}/levels.jsonl",
        run=f"{RUN_DIR}/run.json",
        server_log=f"{RUN_DIR}/server.log",
    log:
        f"{EXP_DIR}/logs/serve_sweep/{{arm}}-rep{{repeat}}.log",
    conda:
        "../envs/attnbench.yaml"
    # resources: one server at a time (profiles/default); the SLURM request (GPU model, partition, CPUs, memory,
    # wall time) from run_resources, docs/cluster.md
    resources:
        **run_resources(config),
        server=1,
    params:
        run_dir=lambda wildcards, output: Path(output.run).parent,
        exp_dir=lambda wildcards, output: Path(output.run).parents[3],
        fingerprint=arm_fingerprint,
    shell:
        "attnbench run-arm --config {input.config} --arm {wildcards.arm} --repeat {wildcards.repeat}"
        " --out {params.run_dir} --exp-dir {params.exp_dir} > {log} 2>&1"
