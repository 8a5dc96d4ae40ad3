"""Rendered container definitions, parsed back with real parsers (spython for Apptainer recipes, dockerfile-parse for
Dockerfiles); pinning rules; the apptainer command line. Nothing here builds or runs an image: the podman tests in
tests/integration/test_podman.py do that with the CPU engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from spython.main.parse.parsers import SingularityParser

from attnbench import containers
from attnbench.config import load_config
from attnbench.errors import CompatibilityError, ContainerError

ROOT = Path(__file__).resolve().parents[2]
H100 = "h100-80gb-hbm3-sm90-80g"
# A syntactically valid digest used ONLY inside this test's temporary lock copy; it names no real image.
TEST_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def lock():
    return containers.load_lock()


def article(**engine):
    cfg = load_config(ROOT / "config" / "article.yaml")
    cfg["engine"].update(engine)
    return cfg


def parse_def(text: str, tmp_path: Path):
    path = tmp_path / "image.def"
    path.write_text(text)
    (recipe,) = SingularityParser(str(path)).recipe.values()
    return recipe


def parse_dockerfile(text: str, tmp_path: Path) -> DockerfileParser:
    parser = DockerfileParser(path=str(tmp_path / "Dockerfile"))
    parser.content = text
    return parser


def test_lock_digests_are_null_or_real_sha256(lock):
    """No invented digests: each is null (with a command that resolves it) or a full sha256."""
    for key, entry in lock["images"].items():
        digest = entry.get("digest")
        assert digest is None or (digest.startswith("sha256:") and len(digest) == 71), key
        if digest is None:
            assert "inspect" in entry["resolve"], key
        assert (ROOT / "containers" / key).is_dir(), f"{key} has no template folder"


@pytest.mark.parametrize("arm_index,backend", [(0, "XFORMERS"), (1, "FLASH_ATTN")])
def test_vllm_071_apptainer_recipe_sets_the_backend_env(lock, tmp_path, arm_index, backend):
    cfg = article()
    spec = containers.image_spec(cfg, cfg["arms"][arm_index], H100, lock)
    recipe = parse_def(containers.render_apptainer(spec), tmp_path)
    assert recipe.fromHeader == "docker.io/vllm/vllm-openai:v0.7.1"  # unpinned lock entry: the tag
    assert f"VLLM_ATTENTION_BACKEND='{backend}'" in recipe.environ
    labels = dict(line.split(" ", 1) for line in recipe.labels)
    assert labels["org.attnbench.backend"] == backend
    assert labels["org.attnbench.gpu-type"] == H100
    assert labels["org.attnbench.engine"] == "vllm-0.7.1"
    assert labels["org.attnbench.lock-digest"] == "unpinned"
    assert "vllm.entrypoints.openai.api_server" in recipe.cmd


def test_pinned_lock_builds_from_the_digest(lock, tmp_path):
    pinned = json.loads(json.dumps(lock))
    pinned["images"]["vllm-0.7.1"]["digest"] = TEST_DIGEST
    cfg = article()
    spec = containers.image_spec(cfg, cfg["arms"][0], H100, pinned)
    assert parse_def(containers.render_apptainer(spec), tmp_path).fromHeader == f"docker.io/vllm/vllm-openai@{TEST_DIGEST}"
    docker = parse_dockerfile(containers.render_dockerfile(spec), tmp_path)
    assert docker.baseimage == f"docker.io/vllm/vllm-openai@{TEST_DIGEST}"
    assert docker.labels["org.attnbench.lock-digest"] == TEST_DIGEST


def test_vllm_026_bakes_flags_not_env(lock, tmp_path):
    cfg = article(image="vllm-0.26.0", version="0.26.0")
    arm = {"name": "fa2", "backend": "FLASH_ATTN", "flash_attn_version": 2}
    spec = containers.image_spec(cfg, arm, H100, lock)
    docker = parse_dockerfile(containers.render_dockerfile(spec), tmp_path)
    assert docker.baseimage == "docker.io/vllm/vllm-openai:v0.26.0"
    assert "VLLM_ATTENTION_BACKEND" not in docker.envs
    entrypoint = json.loads(docker.structure[-1]["value"])
    assert entrypoint[:2] == ["vllm", "serve"]
    assert entrypoint[2:] == ["--attention-config", '{"backend":"FLASH_ATTN","flash_attn_version":2}']
    recipe = parse_def(containers.render_apptainer(spec), tmp_path)
    assert "--attention-config" in recipe.cmd and "flash_attn_version" in recipe.cmd


def test_dockerfile_env_and_labels_round_trip(lock, tmp_path):
    cfg = article()
    spec = containers.image_spec(cfg, cfg["arms"][1], "rtx3070-laptop-sm86-8g", lock)
    docker = parse_dockerfile(containers.render_dockerfile(spec), tmp_path)
    assert docker.envs["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"
    assert docker.envs["ATTNBENCH_GPU_TYPE"] == "rtx3070-laptop-sm86-8g"
    assert docker.labels == spec.labels


def test_variant_is_copied_in_and_put_on_pythonpath(lock, tmp_path, monkeypatch):
    variant = tmp_path / "variants" / "xformers-cutlass"
    variant.mkdir(parents=True)
    (variant / "sitecustomize.py").write_text("# test variant\n")
    monkeypatch.setattr(containers, "variant_dir", lambda name: variant)
    cfg = article()
    arm = {"name": "xformers_cutlass", "backend": "XFORMERS", "variant": "xformers-cutlass"}
    spec = containers.image_spec(cfg, arm, H100, lock)
    recipe = parse_def(containers.render_apptainer(spec), tmp_path)
    assert recipe.files == [f"{variant} {containers.VARIANT_TARGET}"]
    assert f"PYTHONPATH='{containers.VARIANT_TARGET}'" in recipe.environ
    docker = parse_dockerfile(containers.render_dockerfile(spec), tmp_path)
    assert f"COPY variant {containers.VARIANT_TARGET}" in docker.content
    assert docker.labels["org.attnbench.variant"] == "xformers-cutlass"


def test_missing_variant_folder_is_a_clear_error(lock, tmp_path, monkeypatch):
    monkeypatch.setattr(containers, "CONTAINERS_DIR", tmp_path)
    with pytest.raises(ContainerError, match="variant 'nope'"):
        containers.variant_dir("nope")


def test_unpinned_build_refused_without_allow_unpinned(lock):
    entry = lock["images"]["vllm-0.7.1"]
    with pytest.raises(ContainerError, match="allow_unpinned") as err:
        containers.require_pinned(article(), entry, "vllm-0.7.1")
    assert "skopeo inspect" in str(err.value)  # tells how to resolve it
    containers.require_pinned(article(allow_unpinned=True), entry, "vllm-0.7.1")


def test_build_checks_the_gpu_pair_before_writing_anything(lock, tmp_path):
    out = tmp_path / "img" / "xformers.json"
    cfg = article(allow_unpinned=True)
    with pytest.raises(CompatibilityError, match="rtx5090-sm120-32g"):
        containers.build_image(cfg, cfg["arms"][0], "rtx5090-sm120-32g", out, lock=lock)
    assert not out.parent.exists()


def test_apptainer_build_without_apptainer_names_it(lock, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apptainer, no skopeo
    cfg = article(allow_unpinned=True)
    out = tmp_path / "img" / "xformers.json"
    with pytest.raises(ContainerError, match="apptainer is not installed"):
        containers.build_image(cfg, cfg["arms"][0], H100, out, lock=lock)
    assert (tmp_path / "img" / "xformers.def").read_text().startswith("# Rendered by")  # left for inspection


def test_apptainer_exec_argv_carries_profile_args_binds_and_env():
    argv = containers.apptainer_exec_argv("img.sif", ["python3", "-m", "x"], env={"B": "2", "A": "1"},
                                          binds=["/models"], apptainer_args="--nv --bind results")  # fmt: skip
    assert argv == ["apptainer", "exec", "--nv", "--bind", "results", "--bind", "/models", "--env", "A=1",
                    "--env", "B=2", "img.sif", "python3", "-m", "x"]  # fmt: skip


def test_container_argv_listens_on_all_interfaces_inside_only():
    argv = ["python3", "-m", "vllm", "--host", "127.0.0.1", "--port", "8000"]
    assert containers.container_argv(argv) == ["python3", "-m", "vllm", "--host", "0.0.0.0", "--port", "8000"]
    assert argv[4] == "127.0.0.1"  # the caller's argv (recorded in run.json) is untouched


def test_image_paths_are_per_engine_arm_and_gpu_type():
    cfg = article()
    a = containers.image_for(cfg, cfg["arms"][0], gpu_type=H100)
    b = containers.image_for(cfg, cfg["arms"][1], gpu_type=H100)
    c = containers.image_for(cfg, cfg["arms"][0], gpu_type="rtx3070-laptop-sm86-8g")
    assert a == f"results/article/images/vllm-0.7.1/{H100}/xformers.sif"
    assert len({a, b, c}) == 3
    docker_cfg = article(runtime="docker")
    tag = containers.image_for(docker_cfg, cfg["arms"][0], gpu_type=H100)
    assert tag == f"localhost/attnbench-article-vllm-0.7.1-xformers:{H100}"


def test_image_provenance_reads_the_build_records(tmp_path):
    cfg = article(allow_unpinned=True)
    sif = Path(containers.image_for(cfg, cfg["arms"][0], gpu_type=H100, results_dir=tmp_path))
    sif.parent.mkdir(parents=True)
    sif.with_suffix(".json").write_text(json.dumps({"ref": str(sif), "resolved_digest": None, "pinned": False,
                                                    "image_id": "sha256:" + "0" * 64, "base_ref": "b:t"}))  # fmt: skip
    sif.with_suffix(".versions.json").write_text(json.dumps({"vllm": "0.7.1", "torch": "2.5.1", "cuda": "12.4",
                                                             "xformers": "0.0.28.post3", "gpus": []}))  # fmt: skip
    prov = containers.image_provenance(cfg, cfg["arms"][0], gpu_type=H100, results_dir=tmp_path)
    assert prov["pinned"] is False and prov["digest"] is None
    assert prov["versions"] == {"vllm": "0.7.1", "torch": "2.5.1", "cuda": "12.4", "xformers": "0.0.28.post3"}
    missing = containers.image_provenance(cfg, cfg["arms"][1], gpu_type=H100, results_dir=tmp_path)
    assert missing["digest"] is None and missing["versions"] == {}


def test_cli_render_prints_a_parseable_recipe(tmp_path, capsys):
    from attnbench.cli import main

    assert main(["image", "render", "--config", str(ROOT / "config/article.yaml"), "--arm", "flash_attn",
                 "--gpu-type", H100]) == 0  # fmt: skip
    recipe = parse_def(capsys.readouterr().out, tmp_path)
    assert "VLLM_ATTENTION_BACKEND='FLASH_ATTN'" in recipe.environ
    assert main(["image", "render", "--config", str(ROOT / "config/article.yaml"), "--arm", "flash_attn",
                 "--gpu-type", "t4-sm75-15g"]) == 2  # fmt: skip
    assert "FLASH_ATTN needs sm_80+" in capsys.readouterr().err


def test_templates_cover_every_lock_entry(lock):
    for key, entry in lock["images"].items():
        kinds = ["Dockerfile"] if entry["device"] == "cpu" else ["Dockerfile", "Apptainer.def"]
        for kind in kinds:
            assert (ROOT / "containers" / key / f"{kind}.in").is_file(), (key, kind)
    assert yaml.safe_load((ROOT / "containers/lock.yaml").read_text())["schema"] == 1


def test_version_probe_refuses_to_describe_the_host_as_the_engine(tmp_path):
    """Outside an image (Snakemake without --use-singularity) the probe must fail, not record host versions."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNBENCH_")}
    proc = subprocess.run([sys.executable, str(ROOT / "containers/probe_versions.py")], capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert proc.returncode != 0 and "--use-singularity" in proc.stderr
    inside = subprocess.run([sys.executable, str(ROOT / "containers/probe_versions.py")], capture_output=True,
                            text=True, env={**env, "ATTNBENCH_ENGINE": "vllm-0.7.1"})  # fmt: skip
    assert inside.returncode == 0
    assert set(json.loads(inside.stdout)) >= {"vllm", "torch", "cuda", "xformers", "python"}
