"""attnbench: vLLM attention-backend benchmarks as one Snakemake workflow.

GPU host (the article and its errata rerun):  snakemake --cores 1 --use-singularity
CPU demo (any machine):  snakemake --cores 1 --configfile config/demo.yaml
"""

import copy

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from attnbench.config import preflight
from attnbench.errors import ConfigError

min_version("8.0")


# The workflow's description in `snakemake --report report.zip` (captions of each table and plot: workflow/report/).
report: "workflow/report/workflow.rst"


# The default experiment is the errata rerun: the article's two arms exactly as published plus the true no-FA2
# arm, each with kernel proof (config/article.yaml runs the article alone). A --configfile replaces it rather than
# being merged over it (a merge would leave article keys such as model.quantization in the demo); the remote jobs
# of cluster executors get the same --configfile list, so they see the same config as the main process.
if not workflow.overwrite_configfiles:

    configfile: "config/errata.yaml"


# What the config file says, before defaults are filled: a run reruns when this changes for its arm (common.smk's
# arm_fingerprint), not when a new schema default appears.
USER_CONFIG = copy.deepcopy(config)
# attnbench.config first, so that a mistake gets one line naming the field (keys given twice, unknown keys with a
# near miss, NaN, a model that is not there) before Snakemake's own validation could print its schema dump.
try:
    preflight(workflow.configfiles, config)
except ConfigError as exc:
    raise WorkflowError(f"bad config: {exc}") from None
# The schema fills defaults; attnbench.config then checks the rules spanning fields (common.smk).
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/config.smk"


wildcard_constraints:
    arm="|".join(ARMS),
    repeat=r"\d+",


include: "workflow/rules/engine.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/containers.smk"
include: "workflow/rules/serve.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/bundle.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# Under a cluster executor (profiles/slurm) only the server+sweep runs (and the builds, if so configured) become
# cluster jobs; every other rule runs on the submit host. Local runs are unaffected. docs/cluster.md
workflow.localrules(
    *(r.name for r in workflow.rules if r.name not in remote_rules(config))
)
