# Result bundle: the last step of `rule all`. Thin rules; attnbench.bundles.bundle / verify / compare do the work.
#
# The bundle's name carries the GPU type and the date of the last run (known only after the runs), so the rule's
# declared output is a receipt beside it: "<sha256>  bundle-<gpu-type>-<yyyymmdd>.tar.gz". The rule verifies the
# bundle it wrote, exactly as a peer will (`attnbench verify`), and fails without a receipt if that does not pass.
#
# Comparing bundles received from peers (not part of `rule all`): put them in received/<name>/ and run
#   snakemake --cores 1 results/comparison/<name>/comparison.md
# or directly: attnbench compare received/<name>/ --reference article --out results/comparison/<name>
#
# Signing (docs/bundles.md): with bundle.sign_key in the config (an Ed25519 OpenSSH private key), rule bundle also
# writes <bundle>.tar.gz.sig; with bundle.allowed_signers, compare_received fails on a bundle that is unsigned or
# signed by a key outside that file. Both are checked here, while parsing, so a wrong path stops even a dry run.
import glob

SIGN_OPTION = signing_option("sign_key", "--sign-key")
ALLOWED_SIGNERS_OPTION = signing_option("allowed_signers", "--allowed-signers")


rule bundle:
    input:
        AGGREGATE_TARGETS,
        run_files(),
        config=CONFIG_FILE,
    output:
        receipt=report(
            f"{EXP_DIR}/bundle.sha256",
            caption="../report/bundle.rst",
            category="Provenance",
        ),
    log:
        f"{EXP_DIR}/logs/bundle.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        exp_dir=lambda wildcards, output: Path(output.receipt).parent,
        sign=SIGN_OPTION,
    shell:
        "attnbench bundle {params.exp_dir} --config {input.config} {params.sign} --verify"
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
        allowed_signers=ALLOWED_SIGNERS_OPTION,
    shell:
        "attnbench compare {input} --reference article {params.allowed_signers} --out {params.out} > {log} 2>&1"


BUNDLE_TARGETS = rules.bundle.output
