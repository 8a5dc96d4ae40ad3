"""The bundles committed under results/published must keep verifying with the code as it is now: verify recomputes
every derived table from the raw records, so a change to the metrics or tables that would alter a published number
fails here rather than in a peer's hands."""

from pathlib import Path

import pytest

from attnbench.bundles import serverlog, verify

PUBLISHED = sorted((Path(__file__).parents[2] / "results" / "published").glob("*/bundle-*.tar.gz"))


def test_there_is_a_published_bundle():
    assert PUBLISHED, "results/published holds no bundle"


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.parent.name for p in PUBLISHED])
def test_published_bundle_verifies(path):
    assert verify.verify_bundle(path).findings == []


def test_h100_bundle_says_what_ran():
    (path,) = [p for p in PUBLISHED if p.parent.name == "h100-vllm0.26"]
    manifest = verify.verify_bundle(path).manifest
    assert manifest["gpu_type"] == "h100-80gb-hbm3-sm90-80g"
    # Partial by design (two sessions' device time): the manifest says which runs are missing.
    ran = {(a["name"], r["repeat"]) for a in manifest["arms"] for r in a["runs"] if r["status"] == "ok"}
    assert ran == {("fa3", 0), ("fa3", 1), ("fa3", 2), ("fa2", 0), ("fa2", 1), ("triton", 0), ("triton", 1)}
    assert manifest["complete"] is False
    # Written before server logs lost their prompts (bundle schema 2): a version 1 bundle still verifies as it is.
    assert manifest["bundle_schema"] == 1 and "elided" not in manifest


def test_errata_bundle_ran_the_article_engine_through_apptainer_with_its_kernels():
    """The vLLM 0.7.1 errata bundle (12 runs, two sessions, two H100 machines): every run in the Apptainer image (its
    sha256 in run.json), the server started by `apptainer exec --nv`, awq_marlin as the article's command gets, and
    each arm's kernels (the erratum: XFORMERS prefilled through PyTorch's FlashAttention-2)."""
    import json
    import tarfile

    (path,) = [p for p in PUBLISHED if p.parent.name == "h100-vllm0.7.1-errata"]
    manifest = verify.verify_bundle(path).manifest
    ran = {(a["name"], r["repeat"]) for a in manifest["arms"] for r in a["runs"] if r["status"] == "ok"}
    arms = ("xformers", "flash_attn", "xformers_cutlass", "flash_attn_fa3")
    assert ran == {(arm, k) for arm in arms for k in range(3)} and manifest["complete"] is True
    with tarfile.open(path) as tar:
        runs = {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith("/run.json")}
    assert len(runs) == 12
    # Runs from two sessions on two machines, merged: each run names its card (a hash of the GPU's UUID).
    cards = {run["arm"] + str(run["repeat"]): run["gpu"]["gpu"] for run in runs.values()}
    assert len(set(cards.values())) == 2 and all(len(c) == 12 for c in cards.values()), cards
    for name, run in runs.items():
        assert run["server"]["argv"][:4] == ["apptainer", "exec", "--cleanenv", "--nv"], name
        assert run["engine"]["image_sha256"] == "0506d99f42e7c4b5e50955a5a05aba2fecd6a8ae891c4201499340e64b3f838d"
        assert run["engine"]["versions"] == {
            "cuda": "12.4",
            "torch": "2.5.1+cu124",
            "vllm": "0.7.1",
            "xformers": "0.0.28.post3",
        }
        assert run["quantization"]["logged"] == "awq_marlin" and run["quantization"]["match"], name
        families = {k for k, v in run["kernels"]["families"].items() if v and k != "other"}
        arm = run["arm"]
        assert (
            families
            == {
                "xformers": {"pytorch_flash", "paged_attention"},
                "flash_attn": {"fa2"},
                "xformers_cutlass": {"xformers_cutlass", "paged_attention"},
                "flash_attn_fa3": {"fa3"},  # 0.7.1's Hopper default when VLLM_FLASH_ATTN_VERSION is not set
            }[arm]
        ), (name, families)


def test_errata_bundle_is_small_and_its_server_logs_carry_no_prompt():
    """vLLM 0.7.1 logs every request's prompt; the bundle keeps each log's lines with the prompts elided, and the
    manifest ties each log to the file the run wrote (results/errata/runs/<arm>/rep<k>/server.log, not in git)."""
    import tarfile

    (path,) = [p for p in PUBLISHED if p.parent.name == "h100-vllm0.7.1-errata"]
    assert path.stat().st_size < 5 * 2**20
    manifest = verify.verify_bundle(path).manifest
    assert manifest["bundle_schema"] == 2
    logs = sorted(rel for rel in manifest["files"] if rel.endswith("/server.log"))
    assert len(logs) == 12 and sorted(manifest["elided"]) == logs
    with tarfile.open(path) as tar:
        for rel in logs:
            text = tar.extractfile(rel).read().decode("utf-8")
            original = manifest["elided"][rel]
            # every request line of the run (685 each: its chat requests, the tokenizer's and the kernel probe's)
            assert original["elided_lines"] == serverlog.count_marked(text) == 685, rel
            assert serverlog.elide_requests(text) == (text, 0), rel  # no request line still holds its prompt
            assert "muzi" not in text and "<|im_start|>" not in text, rel  # words of the synthetic prompts
            assert original["original_lines"] == serverlog.count_lines(text) and original["original_bytes"] > 10**6
