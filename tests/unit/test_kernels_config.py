"""The errata experiment's kernel expectations, as the pipeline will read them."""

from __future__ import annotations

from pathlib import Path

import yaml

from attnbench.config import arm_by_name, load_config, load_schema
from attnbench.engines import kernels

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "traces"


def test_schema_lists_exactly_the_classifier_families():
    assert load_schema()["$defs"]["kernel_family"]["enum"] == kernels.FAMILIES


def test_errata_has_the_article_arms_and_a_true_no_fa2_arm():
    cfg = load_config(ROOT / "config" / "errata.yaml")
    assert cfg["engine"]["version"] == "0.7.1"
    assert cfg["kernels"]["probe"] is True
    xformers, flash, cutlass = (arm_by_name(cfg, n) for n in ("xformers", "flash_attn", "xformers_cutlass"))
    assert (xformers["backend"], flash["backend"], cutlass["backend"]) == ("XFORMERS", "FLASH_ATTN", "XFORMERS")
    assert xformers["expect_kernels"] == {"require": [], "forbid": []}  # record only: the erratum's evidence
    assert "fa2" in flash["expect_kernels"]["require"]
    assert flash["env"]["VLLM_FLASH_ATTN_VERSION"] == "2"  # vLLM 0.7.1 picks FA3 on sm_90 otherwise
    assert cutlass["variant"] == "xformers-cutlass"
    assert (ROOT / "containers" / "variants" / cutlass["variant"]).is_dir()
    assert set(cutlass["expect_kernels"]["forbid"]) >= {"pytorch_flash", "fa2", "fa3"}
    assert cutlass["expect_kernels"]["require"] == ["xformers_cutlass"]
    assert cfg["baseline"] == "xformers_cutlass"


def test_errata_expectations_reject_the_articles_xformers_kernels():
    # The article's XFORMERS arm prefilled with PyTorch's FA2: under the no-FA2 arm's expectations such a run
    # must fail. Kernel names are real (torch 2.5.1 and vLLM 0.7.1 symbol tables).
    names = yaml.safe_load((FIXTURES / "kernel_names.json").read_text())["names"]
    flash = next(e["name"] for e in names if e["family"] == "pytorch_flash")
    paged = next(e["name"] for e in names if e["family"] == "paged_attention")
    cutlass = next(e["name"] for e in names if e["family"] == "xformers_cutlass")
    expect = arm_by_name(load_config(ROOT / "config" / "errata.yaml"), "xformers_cutlass")["expect_kernels"]

    def attribution(*kernel_names):
        return {
            "families": {
                kernels.classify(n): {"count": 1, "share": 0.1, "kernels": [{"name": n}]} for n in kernel_names
            }
        }

    assert kernels.check_expectations(attribution(flash, paged), expect) == [
        f"forbidden kernel family pytorch_flash ran: 1 kernels, 10.0% of time ({flash[:80]})",
        "required kernel family xformers_cutlass did not run (seen: paged_attention, pytorch_flash)",
    ]
    assert kernels.check_expectations(attribution(cutlass, paged), expect) == []
