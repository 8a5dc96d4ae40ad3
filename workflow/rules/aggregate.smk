# Analysis: raw run folders -> tables -> plots -> report. Thin rules; attnbench.analysis.aggregate/plots/report do the work.
# Every output meant for `snakemake --report report.html` is wrapped in report() with a caption in workflow/report/.
from attnbench.analysis.plots import (
    FIGURES as PLOT_FIGURES,
    FORMATS as PLOT_FORMATS,
    KINDS as PLOT_KINDS,
)

WORKLOADS = list(config["workloads"])


rule aggregate:
    input:
        run_files(),
        config=CONFIG_FILE,
        published="config/reference/article_published.csv",
    output:
        levels=report(
            f"{EXP_DIR}/tables/levels.csv",
            caption="../report/levels.rst",
            category="Tables",
        ),
        parquet=f"{EXP_DIR}/tables/levels.parquet",
        tables_format=f"{EXP_DIR}/tables/tables_format.txt",
        comparisons=f"{EXP_DIR}/tables/comparisons.csv",
        flags=f"{EXP_DIR}/tables/flags.md",
        kernel_shares=f"{EXP_DIR}/tables/kernel_shares.csv",
        articles=expand(
            f"{EXP_DIR}/tables/article_{{arm}}_{{workload}}.md",
            arm=ARMS,
            workload=WORKLOADS,
        ),
        vs_baseline=report(
            f"{EXP_DIR}/tables/arms_vs_baseline.md",
            caption="../report/arms_vs_baseline.rst",
            category="Tables",
        ),
        vs_published=report(
            f"{EXP_DIR}/tables/vs_published.csv",
            caption="../report/vs_published.rst",
            category="Tables",
        ),
        vs_published_md=f"{EXP_DIR}/tables/vs_published.md",
        kernels=report(
            f"{EXP_DIR}/tables/kernels.md",
            caption="../report/kernels.rst",
            category="Tables",
        ),
        decode=f"{EXP_DIR}/tables/decode_efficiency.md",
    log:
        f"{EXP_DIR}/logs/aggregate.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        exp_dir=lambda wildcards, output: Path(output.levels).parents[1],
    shell:
        "attnbench aggregate {params.exp_dir} --config {input.config} > {log} 2>&1"


rule plots:
    input:
        levels=rules.aggregate.output.levels,
        comparisons=rules.aggregate.output.comparisons,
        vs_published=rules.aggregate.output.vs_published,
        kernel_shares=rules.aggregate.output.kernel_shares,
        config=CONFIG_FILE,
    output:
        png=[
            report(path, caption="../report/plots.rst", category="Plots")
            for path in expand(
                f"{EXP_DIR}/plots/{{kind}}_{{workload}}.png",
                kind=PLOT_KINDS,
                workload=WORKLOADS,
            )
        ],
        other=expand(
            f"{EXP_DIR}/plots/{{kind}}_{{workload}}.{{ext}}",
            kind=PLOT_KINDS,
            workload=WORKLOADS,
            ext=[ext for ext in PLOT_FORMATS if ext != "png"],
        )
        + expand(
            f"{EXP_DIR}/plots/{{figure}}.{{ext}}",
            figure=PLOT_FIGURES,
            ext=[ext for ext in PLOT_FORMATS if ext != "png"],
        ),
    log:
        f"{EXP_DIR}/logs/plots.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        exp_dir=lambda wildcards, input: Path(input.levels).parents[1],
    shell:
        "attnbench plots {params.exp_dir} --config {input.config} > {log} 2>&1"


rule report:
    input:
        rules.aggregate.output,
        rules.plots.output,
        config=CONFIG_FILE,
    output:
        md=f"{EXP_DIR}/report.md",
        html=report(
            f"{EXP_DIR}/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
    log:
        f"{EXP_DIR}/logs/report.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        exp_dir=lambda wildcards, output: Path(output.md).parent,
    shell:
        "attnbench report {params.exp_dir} --config {input.config} > {log} 2>&1"


AGGREGATE_TARGETS = rules.report.output


onsuccess:
    # The last thing a person sees after `snakemake ...` ends: where to look.
    report_md = Path(EXP_DIR) / "report.md"
    if report_md.exists():
        print(
            f"Report: {report_md} and {report_md.with_suffix('.html')} (tables in {EXP_DIR}/tables/)"
        )
