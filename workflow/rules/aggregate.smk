# Analysis: raw run folders -> tables -> plots -> report. Thin rules; attnbench.aggregate/plots/report do the work.
# Every output meant for `snakemake --report report.html` is wrapped in report() with a caption in workflow/report/.
from attnbench.plots import FORMATS as PLOT_FORMATS, KINDS as PLOT_KINDS

TABLES_DIR = EXP_DIR + "/tables"
PLOTS_DIR = EXP_DIR + "/plots"
WORKLOADS = list(config["workloads"])
PUBLISHED_CSV = "config/reference/article_published.csv"


def article_tables():
    return expand(
        TABLES_DIR + "/article_{arm}_{workload}.md", arm=ARMS, workload=WORKLOADS
    )


def plot_files(ext):
    return expand(
        PLOTS_DIR + "/{kind}_{workload}.{ext}",
        kind=PLOT_KINDS,
        workload=WORKLOADS,
        ext=ext,
    )


rule aggregate:
    input:
        run_files(),
        config=CONFIG_FILE,
        published=PUBLISHED_CSV,
    output:
        levels=report(
            TABLES_DIR + "/levels.csv",
            caption="../report/levels.rst",
            category="Tables",
        ),
        parquet=TABLES_DIR + "/levels.parquet",
        articles=article_tables(),
        vs_baseline=report(
            TABLES_DIR + "/arms_vs_baseline.md",
            caption="../report/arms_vs_baseline.rst",
            category="Tables",
        ),
        vs_published=report(
            TABLES_DIR + "/vs_published.csv",
            caption="../report/vs_published.rst",
            category="Tables",
        ),
        vs_published_md=TABLES_DIR + "/vs_published.md",
        kernels=report(
            TABLES_DIR + "/kernels.md",
            caption="../report/kernels.rst",
            category="Tables",
        ),
        decode=TABLES_DIR + "/decode_efficiency.md",
    log:
        EXP_DIR + "/logs/aggregate.log",
    params:
        exp_dir=EXP_DIR,
    shell:
        "attnbench aggregate {params.exp_dir} --config {input.config} > {log} 2>&1"


rule plots:
    input:
        levels=rules.aggregate.output.levels,
        config=CONFIG_FILE,
    output:
        png=[
            report(p, caption="../report/plots.rst", category="Plots")
            for p in plot_files("png")
        ],
        svg=plot_files([e for e in PLOT_FORMATS if e != "png"]),
    log:
        EXP_DIR + "/logs/plots.log",
    params:
        exp_dir=EXP_DIR,
    shell:
        "attnbench plots {params.exp_dir} --config {input.config} > {log} 2>&1"


rule report:
    input:
        rules.aggregate.output,
        rules.plots.output,
        config=CONFIG_FILE,
    output:
        md=EXP_DIR + "/report.md",
        html=report(
            EXP_DIR + "/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
    log:
        EXP_DIR + "/logs/report.log",
    params:
        exp_dir=EXP_DIR,
    shell:
        "attnbench report {params.exp_dir} --config {input.config} > {log} 2>&1"


AGGREGATE_TARGETS = rules.report.output
