# Result bundle: the last step of `rule all`. Thin rules; attnbench.bundles.bundle / verify / compare do the work.
#
# The bundle's name carries the GPU type and the date of the last run (known only after the runs), so the rule's
# declared output is a receipt beside it: "<sha256>  bundle-<gpu-type>-<yyyymmdd>.tar.gz". The rule verifies the
# bundle it wrote, exactly as a peer will (`attnbench verify`), and fails without a receipt if that does not pass.
#
# Comparing bundles received from peers (not part of `rule all`): put them in received/<name>/ and run
#   snakemake --cores 1 results/comparison/<name>/comparison.md
# or directly: attnbench compare received/<name>/ --reference article --out results/comparison/<name>
import glob


rule bundle:
    input:
        AGGREGATE_TARGETS,
        run_files(),
        config=CONFIG_FILE,
    output:
        receipt=f"{EXP_DIR}/bundle.sha256",
    log:
        f"{EXP_DIR}/logs/bundle.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        exp_dir=lambda wildcards, output: Path(output.receipt).parent,
    shell:
        "attnbench bundle {params.exp_dir} --config {input.config} --verify"
        " --receipt {output.receipt} > {log} 2>&1"


rule compare_received:
    input:
        # an empty folder gives no inputs, and `attnbench compare` then says it needs a bundle
        lambda wildcards: sorted(glob.glob(f"received/{wildcards.name}/*.tar.gz")),
    output:
        report="results/comparison/{name}/comparison.md",
        tables=multiext(
            "results/comparison/{name}/",
            "sources.csv",
            "side_by_side.csv",
            "ratios.csv",
        ),
    log:
        "results/comparison/{name}/compare.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        out=lambda wildcards, output: Path(output.report).parent,
    shell:
        "attnbench compare {input} --reference article --out {params.out} > {log} 2>&1"


BUNDLE_TARGETS = rules.bundle.output
