"""`attnbench compare`: bundles side by side (across GPU types), ratios with the tables' interval and verdict, the
article's published numbers as a reference, plots; unverifiable bundles are refused."""

from __future__ import annotations

import math
import shutil
import tarfile

import pandas as pd
import pytest
from bundlefixture import make_experiment

from attnbench.analysis import compare, stats
from attnbench.bundles import bundle
from attnbench.cli import main
from attnbench.errors import BundleError


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    # three repeats: the fewest that carry an interval (stats.MIN_REPEATS_FOR_INTERVAL)
    exp_a, cfg_a = make_experiment(root / "a", seed=1, repeats=3)
    exp_b, cfg_b = make_experiment(root / "b", seed=2, speedup=2.0, gpu_type="h100-sxm-sm90-80g", repeats=3)
    exp_c, cfg_c = make_experiment(root / "c", seed=1, repeats=3)  # a's twin
    return (
        bundle.build_bundle(exp_a, cfg_a, root / "out_a"),
        bundle.build_bundle(exp_b, cfg_b, root / "out_b"),
        bundle.build_bundle(exp_c, cfg_c, root / "out_c"),
    )


def test_two_gpu_types_merge_with_ratios_and_noise_verdict(bundles, tmp_path):
    a, b, c = bundles
    written = compare.compare([a, b, c], tmp_path / "cmp")
    names = {p.relative_to(tmp_path / "cmp").as_posix() for p in written}
    assert {
        "comparison.md",
        "sources.csv",
        "side_by_side.csv",
        "ratios.csv",
        "plots/side_by_side_short.png",
        "plots/side_by_side_short.svg",
        "plots/ratios_short.png",
    } <= names
    assert all(p.stat().st_size > 0 for p in written)
    sources = pd.read_csv(tmp_path / "cmp/sources.csv")
    assert list(sources["gpu_type"]) == ["cpu-x86_64", "h100-sxm-sm90-80g", "cpu-x86_64"]
    assert list(sources["verify"]) == ["PASS"] * 3
    sbs = pd.read_csv(tmp_path / "cmp/side_by_side.csv")
    assert set(sbs["gpu_type"]) == {"cpu-x86_64", "h100-sxm-sm90-80g"}
    assert {"generation_throughput_tps", "max_ttft_s"} <= set(sbs["metric"])
    rat = pd.read_csv(tmp_path / "cmp/ratios.csv")
    gen = rat[(rat["metric"] == "generation_throughput_tps") & (rat["arm"] == rat["base_arm"])]
    faster = gen[gen["gpu_type"] == "h100-sxm-sm90-80g"]
    same = gen[(gen["gpu_type"] == "cpu-x86_64")]
    # b streams twice as fast: its ratio is ~2 and well outside the repeat noise; c holds a's very numbers.
    assert len(faster) == 4 and faster["ratio"].between(1.8, 2.2).all(), faster
    assert (faster["verdict"] == "resolved").all() and (faster["ci_low"] > 1.0).all()
    assert len(same) == 4 and (same["ratio"] == 1.0).all() and (same["source"] == f"{a.name[:-7]}#2").all()
    assert (same["ci_low"] <= 1.0).all() and (same["ci_high"] >= 1.0).all()
    assert same["verdict"].str.startswith("not resolved").all()
    # the ratio is the ratio of the means the side-by-side table shows
    row = faster.iloc[0]

    def mean(src, arm):
        return sbs[
            (sbs["source"] == src)
            & (sbs["arm"] == arm)
            & (sbs["workload"] == row["workload"])
            & (sbs["concurrency"] == row["concurrency"])
            & (sbs["metric"] == "generation_throughput_tps")
        ]["mean"].iloc[0]

    assert row["ratio"] == pytest.approx(
        mean(row["source"], row["arm"]) / mean(row["base_source"], row["base_arm"]), rel=1e-5
    )
    md = (tmp_path / "cmp/comparison.md").read_text()
    assert "h100-sxm-sm90-80g fast" in md and "| verdict" in md and "![side_by_side_short]" in md


def test_bundle_against_the_article_reference(bundles, tmp_path):
    a, _, _ = bundles
    assert main(["compare", str(a), "--reference", "article", "--out", str(tmp_path / "ref")]) == 0
    rat = pd.read_csv(tmp_path / "ref/ratios.csv")
    pub = pd.read_csv(stats.PUBLISHED_CSV)
    # every arm of the bundle meets both published backends at the levels both measured (short c1, c2)
    assert set(rat["base_arm"]) == {"XFORMERS", "FLASH_ATTN"} and set(rat["base_source"]) == {"article"}
    assert set(zip(rat["workload"], rat["concurrency"])) == {("short", 1), ("short", 2)}
    row = rat[
        (rat["base_arm"] == "FLASH_ATTN")
        & (rat["concurrency"] == 2)
        & (rat["arm"] == "fast")
        & (rat["metric"] == "generation_throughput_tps")
    ].iloc[0]
    published = pub[(pub["backend"] == "FLASH_ATTN") & (pub["workload"] == "short") & (pub["concurrency"] == 2)]
    assert row["base_value"] == pytest.approx(published["generation_throughput_tps"].iloc[0])
    assert row["ratio"] == pytest.approx(row["value"] / row["base_value"], rel=1e-5)
    # the published number is exact: the interval is our three repeats' t interval alone (n - 1 degrees of freedom)
    ours = pd.read_csv(tmp_path / "ref/side_by_side.csv")
    ours = ours[
        (ours["arm"] == "fast")
        & (ours["workload"] == "short")
        & (ours["concurrency"] == 2)
        & (ours["metric"] == "generation_throughput_tps")
    ].iloc[0]
    half = stats.t975(ours["n"] - 1) * ours["std"] / ours["mean"] / math.sqrt(ours["n"])
    assert ours["n"] == 3 and row["ci_low"] == pytest.approx(row["ratio"] * math.exp(-half), rel=1e-4)
    assert row["ci_high"] == pytest.approx(row["ratio"] * math.exp(half), rel=1e-4) and row["verdict"] == "resolved"
    assert row["base_gpu_type"] == compare.ARTICLE_GPU_TYPE
    assert (tmp_path / "ref/plots/ratios_short.svg").stat().st_size > 0
    assert "| article" in (tmp_path / "ref/comparison.md").read_text()


def test_folder_of_received_bundles(bundles, tmp_path):
    inbox = tmp_path / "received"
    inbox.mkdir()
    for i, p in enumerate(bundles[:2]):
        shutil.copy(p, inbox / f"{i}-{p.name}")
    assert compare.expand_inputs([str(inbox)]) == sorted(inbox.glob("*.tar.gz"))
    compare.compare(compare.expand_inputs([str(inbox)]), tmp_path / "out")
    assert len(pd.read_csv(tmp_path / "out/sources.csv")) == 2
    with pytest.raises(BundleError, match="no \\*.tar.gz"):
        compare.expand_inputs([str(tmp_path / "out/plots")])


def test_tampered_bundle_is_refused_unless_allowed(bundles, tmp_path):
    a, b, _ = bundles
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(a) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "tables/levels.csv":
                data = data.replace(b"fast", b"fost", 1)
            m.size = len(data)
            import io

            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(BundleError, match="does not verify"):
        compare.compare([bad, b], tmp_path / "x")
    compare.compare([bad, b], tmp_path / "y", allow_unverified=True)
    assert pd.read_csv(tmp_path / "y/sources.csv")["verify"].iloc[0].startswith("FAIL")
