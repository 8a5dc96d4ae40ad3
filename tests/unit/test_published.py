"""The bundles committed under results/published must keep verifying with the code as it is now: verify recomputes
every derived table from the raw records, so a change to the metrics or tables that would alter a published number
fails here rather than in a peer's hands."""

from pathlib import Path

import pytest

from attnbench import verify

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
