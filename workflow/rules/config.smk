# The effective config as a file: the validated config with the schema's defaults filled in, which every attnbench
# command reads (--config). This rule writes it; parsing the workflow only computes it, so `snakemake -n` writes
# nothing.
#
# It is rewritten when its content changes (the digest in params: Snakemake's params trigger covers a changed file,
# a --config override and a new schema default) or when a config file is newer than it (a file written before this
# rule existed has no recorded digest). Runs and image rules (serve.smk, containers.smk) take it as ancient() input:
# it must exist before they start, but a rewrite must not redo finished runs, which rerun only when their own arm's
# settings change (arm_fingerprint). Aggregate, plots, report and bundle take it as plain input and follow it.


rule effective_config:
    input:
        workflow.configfiles,
    output:
        report(CONFIG_FILE, caption="../report/config.rst", category="Provenance"),
    log:
        f"{EXP_DIR}/logs/effective_config.log",
    params:
        digest=EFFECTIVE_CONFIG_DIGEST[:16],
    run:
        write_effective_config(output[0], log[0])
