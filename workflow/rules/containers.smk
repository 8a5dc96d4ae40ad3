# Engine images for runtime apptainer/docker. How the pieces fit (docs/containers.md):
#   - the (engine, arm, model, GPU) pair and the container tool are checked HERE, while the workflow is parsed: an
#     impossible pair or a missing apptainer stops even `snakemake -n`, before anything is built, with every
#     problem in one message;
#   - apptainer: one base image per engine line, results/images/<line>/base.sif (build_base_image, from the line's
#     hash-locked requirements; shared by every experiment and arm), its versions as seen inside (engine_versions,
#     through Snakemake's container: directive, so --use-singularity and the profile's --nv apply), and one small
#     layer record per arm and GPU type (arm_layer: base sha256, backend env, variant checksums, digest);
#   - docker: one image per (engine line, arm, GPU type) (build_image);
#   - serve_sweep (serve.smk) stays on the host: run-arm starts only the server in the image and runs the client
#     and everything after it outside.
import shutil

from attnbench.engines.apptainer import base_recipe_digest
from attnbench.engines.apptainer_exec import apptainer_env, install_hint
from attnbench.engines.compat import check_compatible
from attnbench.engines.gpu import planned_gpu_type
from attnbench.engines.images import image_files
from attnbench.engines.lock import load_lock
from attnbench.errors import AttnbenchError

RUNTIME = config["engine"]["runtime"]
CONTAINER_RUNTIMES = ("apptainer", "docker")
IMAGE_DIR = f"{EXP_DIR}/images/{{image}}/{{gpu_type}}"
BASE_DIR = "results/images/{image}"
USES_APPTAINER = RUNTIME == "apptainer" or any(
    m.name == "APPTAINER" for m in workflow.deployment_settings.deployment_method
)

GPU_TYPE = None
PREFLIGHT = []
if RUNTIME in CONTAINER_RUNTIMES:
    try:
        GPU_TYPE = planned_gpu_type(config)
        if GPU_TYPE != "auto":
            check_compatible(config, GPU_TYPE, load_lock())
    except AttnbenchError as exc:
        PREFLIGHT.append(f"engine/GPU check: {exc}")
if (
    USES_APPTAINER
    and shutil.which("apptainer") is None
    and shutil.which("singularity") is None
):
    PREFLIGHT.append(f"apptainer is not on PATH: {install_hint()}")
if PREFLIGHT:
    raise WorkflowError(" || ".join(PREFLIGHT))
if RUNTIME in CONTAINER_RUNTIMES and GPU_TYPE == "auto":
    print(
        "containers.smk: no GPU on this host; images are planned for gpu.type 'auto'. Building them here stops "
        "at the GPU check; set gpu.type (e.g. --config gpu='{type: h100-80gb-hbm3-sm90-80g}') to plan for a card.",
        file=sys.stderr,
    )
# A host whose capability bounding set lacks one that Apptainer requests for root (CAP_SYS_RESOURCE on some VMs)
# would abort every `apptainer exec` that Snakemake's container: directive starts; dropping it is harmless.
os.environ.update(apptainer_env() if USES_APPTAINER else {})


wildcard_constraints:
    gpu_type=r"[a-z0-9_-]+",
    image=r"[A-Za-z0-9._-]+",


# What each arm's serve_sweep needs from these rules (serve.smk); empty for runtime venv/native.
IMAGE_FILES = {arm: image_files(config, arm, GPU_TYPE, EXP_DIR) for arm in ARMS}


rule build_base_image:
    input:
        # ancient: an imported image (attnbench image import) or a fresh checkout must not look stale by mtime;
        # a changed lock rebuilds through the params below.
        requirements=lambda wildcards: ancient(base_requirements(wildcards.image)),
        definition=ancient(f"{workflow.basedir}/containers/base.def.in"),
        install=ancient(f"{workflow.basedir}/containers/install-engine.sh"),
    output:
        sif=f"{BASE_DIR}/base.sif",
        record=f"{BASE_DIR}/base.json",
    log:
        f"{BASE_DIR}/build.log",
    conda:
        "../envs/attnbench.yaml"
    resources:
        # SLURM request when slurm.builds is cluster (docs/cluster.md)
        **build_resources(config),
    params:
        # what decides the image's content: the requirements lock and the lock entry's apptainer section
        recipe=lambda wildcards: base_recipe_digest(wildcards.image),
    shell:
        "attnbench image build-base --key {wildcards.image} --log {log}"


rule engine_versions:
    input:
        sif=f"{BASE_DIR}/base.sif",
    output:
        f"{BASE_DIR}/base.versions.json",
    log:
        f"{BASE_DIR}/versions.log",
    container:
        # the image this rule runs in is the one build_base_image made (a function of the wildcards)
        lambda wildcards: f"results/images/{wildcards.image}/base.sif"
    shell:
        "python3 containers/probe_versions.py > {output} 2> {log}"


rule arm_layer:
    input:
        record=f"{BASE_DIR}/base.json",
        variant=lambda wildcards: variant_files(wildcards.arm),
    output:
        f"{IMAGE_DIR}/{{arm}}.layer.json",
    log:
        f"{EXP_DIR}/logs/arm_layer/{{image}}-{{gpu_type}}-{{arm}}.log",
    conda:
        "../envs/attnbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "attnbench image layer --config {params.config} --arm {wildcards.arm} --gpu-type {wildcards.gpu_type}"
        " --out {output} > {log} 2>&1"


rule build_image:
    output:
        image=f"{IMAGE_DIR}/{{arm}}.json",
    log:
        f"{EXP_DIR}/logs/build_image/{{image}}-{{gpu_type}}-{{arm}}.log",
    conda:
        "../envs/attnbench.yaml"
    resources:
        **build_resources(config),
    params:
        config=CONFIG_FILE,
    shell:
        "attnbench image build --config {params.config} --arm {wildcards.arm} --gpu-type {wildcards.gpu_type}"
        " --out {output.image} > {log} 2>&1"
