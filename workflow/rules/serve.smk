# One server start per (arm, repeat): start it, sweep every workload against it, stop it. With a single server
# resource (profiles/default) runs never overlap, whatever --cores says.
# run-arm's lines (one per level, and one every 10 s while a level runs) go to the job's log and, through tee, to
# the terminal Snakemake runs in. Snakemake's bash runs with pipefail, so run-arm's exit status stays the job's; tee
# ignores Ctrl-C and SIGTERM so that it keeps the lines run-arm writes while it stops the server ("raw records kept
# in ..."), and ends when run-arm closes the pipe.


rule serve_sweep:
    input:
        model_inputs(),
        engine_inputs(),
        lambda wildcards: IMAGE_FILES[wildcards.arm],  # containers.smk
    output:
        records=f"{RUN_DIR}/records.jsonl",
        levels=f"{RUN_DIR}/levels.jsonl",
        run=report(
            f"{RUN_DIR}/run.json",
            caption="../report/run.rst",
            category="Provenance",
            labels={"run": "{arm} rep{repeat}", "file": "run.json"},
        ),
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
        # not an input: config.smk writes it before any job starts (onstart); as an input, every change of the config
        # would redo every run, and arm_fingerprint is what decides which runs to redo
        config=CONFIG_FILE,
        run_dir=lambda wildcards, output: Path(output.run).parent,
        exp_dir=lambda wildcards, output: Path(output.run).parents[3],
        fingerprint=arm_fingerprint,
    shell:
        "attnbench run-arm --config {params.config} --arm {wildcards.arm} --repeat {wildcards.repeat}"
        " --out {params.run_dir} --exp-dir {params.exp_dir} 2>&1"
        " | (trap '' INT TERM; exec tee {log})"
