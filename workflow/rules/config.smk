# The effective config as a file: the validated config with the schema's defaults filled in, which every attnbench
# command reads (--config). Parsing the workflow only computes it, so `snakemake -n` (and --lint, --report) writes
# nothing; a run writes it in two places:
#   - onstart, before the first job, where its content differs. The runs (serve_sweep) and image rules read it by
#     path, not as an input: Snakemake would redo every run on any change of the config (or, with ancient(), never
#     look at the runs' own rerun triggers once this rule reruns); arm_fingerprint decides which runs to redo.
#   - rule effective_config, its producer in the DAG, which aggregate, plots, report and bundle take as input. It
#     reruns when the content changes (the digest in params: Snakemake's params trigger covers a changed file, a
#     --config override and a new schema default) or a config file is newer than it (a file written before this
#     rule existed has no recorded digest). update(): Snakemake does not delete it first, so a run that starts
#     meanwhile still finds it.


onstart:
    write_effective_config()


rule effective_config:
    input:
        workflow.configfiles,
    output:
        update(
            report(CONFIG_FILE, caption="../report/config.rst", category="Provenance")
        ),
    log:
        f"{EXP_DIR}/logs/effective_config.log",
    params:
        digest=EFFECTIVE_CONFIG_DIGEST[:16],
    run:
        write_effective_config(log[0])
