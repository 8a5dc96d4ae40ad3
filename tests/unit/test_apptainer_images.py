"""Image records, layers, export and import as files (apptainer.py), with a small stand-in file in place of a SIF:
parts and checksums, refusals (damaged part, missing part, another lock), and the layer digest. The same paths run
on the real CPU engine image in tests/integration/test_apptainer.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from attnbench.config import load_config
from attnbench.engines import apptainer, apptainer_exec
from attnbench.engines.apptainer_transfer import export_image, import_image
from attnbench.engines.files import sha256_file
from attnbench.engines.lock import load_lock, requirements_path
from attnbench.errors import ContainerError

ROOT = Path(__file__).resolve().parents[2]
KEY = "vllm-cpu-0.32.0"


@pytest.fixture
def built(tmp_path):
    """images/<KEY>/base.sif (3.5 MiB of bytes) with the base.json a build writes."""
    lock = load_lock()
    images = tmp_path / "images"
    sif = apptainer_exec.base_sif(KEY, images)
    sif.parent.mkdir(parents=True)
    sif.write_bytes(os.urandom(3 * (1 << 20) + 12345))
    req = requirements_path(lock["images"][KEY], KEY)
    record = {
        "key": KEY,
        "sif_sha256": sha256_file(sif),
        "sif_bytes": sif.stat().st_size,
        "lock_sha256": sha256_file(req),
        "requirements": str(req.relative_to(ROOT)),
    }
    apptainer_exec.base_record_path(KEY, images).write_text(json.dumps(record))
    apptainer_exec.base_versions_path(KEY, images).write_text(json.dumps({"vllm": "0.32.0"}))
    return lock, images, record


def test_export_then_import_elsewhere_gives_the_same_image(built, tmp_path):
    lock, images, record = built
    manifest = export_image(KEY, tmp_path / "out", images_dir=images, part_mib=1)
    assert [p["bytes"] for p in manifest["parts"]] == [1 << 20] * 3 + [12345]
    other = tmp_path / "other"
    got = import_image(tmp_path / "out", lock, images_dir=other)
    assert got["sif_sha256"] == record["sif_sha256"]
    assert sha256_file(apptainer_exec.base_sif(KEY, other)) == record["sif_sha256"]
    assert json.loads(apptainer_exec.base_versions_path(KEY, other).read_text()) == {"vllm": "0.32.0"}
    assert "imported" in json.loads(apptainer_exec.base_record_path(KEY, other).read_text())
    assert apptainer.check_base(KEY, lock, other)["sif_sha256"] == record["sif_sha256"]


@pytest.mark.parametrize("damage", ["flip", "missing", "lock"])
def test_import_refuses_a_damaged_or_foreign_export(built, tmp_path, damage):
    lock, images, _ = built
    out = tmp_path / "out"
    manifest = export_image(KEY, out, images_dir=images, part_mib=1)
    part = out / manifest["parts"][1]["name"]
    if damage == "flip":
        data = bytearray(part.read_bytes())
        data[7] ^= 0x40
        part.write_bytes(bytes(data))
    elif damage == "missing":
        part.unlink()
    else:
        changed = json.loads((out / f"{KEY}.export.json").read_text())
        changed["base"]["lock_sha256"] = "f" * 64
        (out / f"{KEY}.export.json").write_text(json.dumps(changed))
    words = {"flip": "damaged", "missing": "is missing", "lock": "refusing"}[damage]
    with pytest.raises(ContainerError, match=words):
        import_image(out, lock, images_dir=tmp_path / "other")
    assert not apptainer_exec.base_sif(KEY, tmp_path / "other").exists()
    assert not list((tmp_path / "other").rglob("*.partial"))


def test_export_refuses_an_image_that_changed_after_its_build(built, tmp_path):
    _, images, _ = built
    with apptainer_exec.base_sif(KEY, images).open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ContainerError, match="does not match"):
        export_image(KEY, tmp_path / "out", images_dir=images)


def test_layer_digest_changes_with_the_variant_and_backend_only(built):
    lock, images, record = built
    cfg = load_config(ROOT / "config" / "errata.yaml")
    arms = {a["name"]: a for a in cfg["arms"]}
    h100 = "h100-80gb-hbm3-sm90-80g"
    base = {**record, "key": "vllm-0.7.1"}
    xf = apptainer.layer_record(cfg, arms["xformers"], h100, base)
    cut = apptainer.layer_record(cfg, arms["xformers_cutlass"], h100, base)
    fa = apptainer.layer_record(cfg, arms["flash_attn"], h100, base)
    assert xf["backend_env"] == {"VLLM_ATTENTION_BACKEND": "XFORMERS"} and xf["variant"] is None
    assert cut["variant"] == "xformers-cutlass" and "sitecustomize.py" in cut["variant_files"]
    assert fa["arm_env"] == {"VLLM_FLASH_ATTN_VERSION": "2"}
    assert len({xf["digest"], cut["digest"], fa["digest"]}) == 3
    assert apptainer.layer_record(cfg, arms["xformers"], h100, base)["digest"] == xf["digest"]  # deterministic
    other_base = {**base, "sif_sha256": "0" * 64}
    assert apptainer.layer_record(cfg, arms["xformers"], h100, other_base)["digest"] != xf["digest"]


def test_check_base_names_a_lock_mismatch(built):
    lock, images, record = built
    apptainer_exec.base_record_path(KEY, images).write_text(json.dumps({**record, "lock_sha256": "e" * 64}))
    with pytest.raises(ContainerError, match="rebuild the image"):
        apptainer.check_base(KEY, lock, images)


def test_a_failed_build_names_apptainers_own_last_words(tmp_path):
    log = tmp_path / "build.log"
    log.write_text(
        "INFO:    Starting build...\nERROR:   first complaint\nsome pip line\n"
        "FATAL:   While performing build: packer failed to pack: copy Failed: no space left on device\n"
        "[image x] squash into SIF\n"
    )
    assert apptainer_exec.failure_line(log).startswith("FATAL:   While performing build: packer failed")
    # Only what the failed command wrote counts: an earlier build's FATAL in the same log is not its cause.
    start = log.stat().st_size
    with log.open("a") as f:
        f.write("INFO:    Starting build...\nsome output without a verdict\n")
    assert apptainer_exec.failure_line(log, start) is None
    log.write_text("INFO: fine\n" * 10)
    assert apptainer_exec.failure_line(log) is None
    assert apptainer_exec.failure_line(tmp_path / "absent.log") is None


def test_the_squash_is_refused_with_numbers_where_the_disk_is_short(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    free = shutil.disk_usage(tmp_path).free
    apptainer.check_squash_space(1 << 20, scratch, tmp_path)  # 1 MiB fits anywhere this test runs
    # A sandbox as large as the free space: its copy fits, the copy plus the SIF does not.
    with pytest.raises(ContainerError, match=r"not enough free disk to squash the image: about [\d.]+ GB needed in "):
        apptainer.check_squash_space(free, scratch, tmp_path)
