# Engine images for runtime apptainer/docker: one per (engine line, arm, GPU type), built once, then used by every
# repeat of that arm. How the pieces fit (docs/containers.md):
#   - the (engine, arm, model, GPU) pair is checked HERE, while the workflow is parsed: an impossible pair stops
#     even `snakemake -n`, before anything is built;
#   - build_image renders the definition and builds it (attnbench image build);
#   - engine_versions runs INSIDE the image through Snakemake's container: directive, so --use-singularity and the
#     profile's apptainer-args (--nv, binds) apply: it records vLLM/torch/CUDA/xformers as the engine sees them;
#   - serve_sweep (serve.smk) stays on the host: run-arm starts only the server in the image (`apptainer exec`, or a
#     docker container) and runs the client and everything after it outside.
import sys

from attnbench.containers import image_files, load_lock
from attnbench.errors import AttnbenchError
from attnbench.gpu import check_compatible, planned_gpu_type

RUNTIME = config["engine"]["runtime"]
CONTAINER_RUNTIMES = ("apptainer", "docker")
IMAGE_DIR = f"{EXP_DIR}/images/{{image}}/{{gpu_type}}"

GPU_TYPE = None
if RUNTIME in CONTAINER_RUNTIMES:
    try:
        GPU_TYPE = planned_gpu_type(config)
        if GPU_TYPE != "auto":
            check_compatible(config, GPU_TYPE, load_lock())
    except AttnbenchError as exc:
        raise WorkflowError(f"engine/GPU check: {exc}") from None
    if GPU_TYPE == "auto":
        print(
            "containers.smk: no GPU on this host; images are planned for gpu.type 'auto'. Building them here stops "
            "at the GPU check; set gpu.type (e.g. --config gpu='{type: h100-80gb-hbm3-sm90-80g}') to plan for a card.",
            file=sys.stderr,
        )


wildcard_constraints:
    gpu_type=r"[a-z0-9_-]+",


# What each arm's serve_sweep needs from these rules (serve.smk); empty for runtime venv/native.
IMAGE_FILES = {arm: image_files(config, arm, GPU_TYPE, EXP_DIR) for arm in ARMS}


rule build_image:
    output:
        image=f"{IMAGE_DIR}/{{arm}}.json",
        sif=f"{IMAGE_DIR}/{{arm}}.sif" if RUNTIME == "apptainer" else [],
    log:
        f"{EXP_DIR}/logs/build_image/{{image}}-{{gpu_type}}-{{arm}}.log",
    conda:
        "../envs/attnbench.yaml"
    resources:
        # SLURM request when slurm.builds is cluster (docs/cluster.md)
        **build_resources(config),
    params:
        config=CONFIG_FILE,
    shell:
        "attnbench image build --config {params.config} --arm {wildcards.arm} --gpu-type {wildcards.gpu_type}"
        " --out {output.image} > {log} 2>&1"


rule engine_versions:
    input:
        sif=f"{IMAGE_DIR}/{{arm}}.sif",
    output:
        f"{IMAGE_DIR}/{{arm}}.versions.json",
    log:
        f"{EXP_DIR}/logs/engine_versions/{{image}}-{{gpu_type}}-{{arm}}.log",
    container:
        # the image this rule runs in is the one build_image made (a function of the wildcards)
        lambda wildcards: f"{EXP_DIR}/images/{wildcards.image}/{wildcards.gpu_type}/{wildcards.arm}.sif"
    shell:
        "python3 containers/probe_versions.py > {output} 2> {log}"
