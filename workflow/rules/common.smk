# Helpers only: paths and wildcard -> config lookups. No rules here.
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from attnbench.config import check_cross_fields, engine_id, engine_venv_dir
from attnbench.engines.cluster import build_resources, remote_rules, run_resources
from attnbench.errors import ConfigError
from attnbench.layout import RUN_FILES

try:
    check_cross_fields(config)
except ConfigError as exc:
    raise WorkflowError(f"bad config: {exc}") from None

# Rules call the `attnbench` CLI of the environment running Snakemake, even when that venv is not activated
# (`.venv/bin/snakemake ...`).
os.environ.update(
    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)

EXP = config["experiment"]
EXP_DIR = f"results/{EXP}"
ARMS = [arm["name"] for arm in config["arms"]]
REPEATS = list(range(config["sweep"]["repeats"]))
RUN_DIR = f"{EXP_DIR}/runs/{{arm}}/rep{{repeat}}"
SYNTHETIC = config["model"].get("architecture") is not None
MODEL_DIR = f"{EXP_DIR}/models/{config['model']['name']}"
ENGINE_LOCK = f"{EXP_DIR}/engine/{engine_id(config)}/engine-lock.txt"


# The validated config with defaults filled, which every attnbench command reads. Parsing only computes it (a dry
# run writes nothing); the effective_config job (config.smk) writes it. Key order as written: tables and plots list
# workloads and arms in the config's order.
CONFIG_FILE = f"{EXP_DIR}/config.effective.json"
EFFECTIVE_CONFIG_TEXT = json.dumps(config, indent=1) + "\n"
EFFECTIVE_CONFIG_DIGEST = hashlib.sha256(EFFECTIVE_CONFIG_TEXT.encode()).hexdigest()


def write_effective_config(log=None):
    """Write config.effective.json where its content differs (config.smk: before any job starts, and as the job of
    rule effective_config). Replaced in one step, so a run starting at that moment reads the old or the new file,
    never half of one."""
    path = Path(CONFIG_FILE)
    if not path.exists() or path.read_text(encoding="utf-8") != EFFECTIVE_CONFIG_TEXT:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(EFFECTIVE_CONFIG_TEXT, encoding="utf-8")
        os.replace(tmp, path)
    if log:
        Path(log).write_text(
            f"{path}: config-sha256:{EFFECTIVE_CONFIG_DIGEST[:16]}\n", encoding="utf-8"
        )


def signing_option(key, flag):
    """'FLAG PATH' for a setting of the config's bundle section (bundle.smk), '' when it is not set; a path that is
    not a file stops the workflow with one line. The key is named by path only, never an input: Snakemake would
    record a checksum of the private key in its metadata."""
    value = (config.get("bundle") or {}).get(key)
    if not value:
        return ""
    path = Path(os.path.expanduser(value))
    if not path.is_file():
        raise WorkflowError(f"bad config: bundle.{key}: {value} is not a file")
    return f"{flag} {shlex.quote(str(path))}"


def arm_fingerprint(wildcards):
    """What the config file says about a run of this arm, as a params value: Snakemake reruns the run when it
    changes (the 'params' rerun trigger) and leaves the other arms alone. Built from the config as written, so a
    default added to the schema later does not invalidate finished runs. A digest keeps Snakemake's rerun reason
    short; config.effective.json shows the values."""
    arm = next(a for a in USER_CONFIG["arms"] if a["name"] == wildcards.arm)
    keys = ("engine", "model", "workloads", "sweep", "kernels")
    parts = {k: USER_CONFIG[k] for k in keys if k in USER_CONFIG}
    text = json.dumps({"arm": arm, **parts}, sort_keys=True, separators=(",", ":"))
    return f"config-sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def model_inputs():
    if not SYNTHETIC:
        return []
    files = [f"{MODEL_DIR}/model/config.json"]
    if not config["model"].get("tokenizer"):
        files.append(f"{MODEL_DIR}/tokenizer/tokenizer.json")
    return files


def engine_inputs():
    return [ENGINE_LOCK] if config["engine"]["runtime"] == "venv" else []


def run_files(arms=None, repeats=None):
    return expand(
        f"{RUN_DIR}/{{name}}",
        arm=arms or ARMS,
        repeat=REPEATS if repeats is None else repeats,
        name=RUN_FILES,
    )


def final_outputs():
    """Targets of the default target: every run, plus what aggregate.smk and bundle.smk declare as their targets (when included)."""
    targets = run_files()
    for name in ("AGGREGATE_TARGETS", "BUNDLE_TARGETS"):
        targets += globals().get(name, [])
    return targets


def variant_files(arm_name):
    """The files of an arm's container variant (containers/variants/<variant>/): its layer is rebuilt when one
    changes."""
    arm = next(a for a in config["arms"] if a["name"] == arm_name)
    if not arm.get("variant"):
        return []
    folder = Path("containers/variants") / arm["variant"]
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def base_requirements(image):
    """The hash-locked requirements file an Apptainer base image is built from (containers/lock.yaml)."""
    from attnbench.engines.lock import load_lock, lock_entry, requirements_path

    return str(requirements_path(lock_entry(load_lock(), image), image))
