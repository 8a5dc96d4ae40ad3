"""Kernel attribution on real data: profiler traces recorded on the CPU engine here and on an H100 (vLLM 0.26), and
kernel names taken from the real symbol tables of vLLM 0.7.1 / 0.26.0 and torch 2.5.1 (tests/fixtures/traces/)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from attnbench import cli
from attnbench.engines import kernels
from attnbench.errors import AttnbenchError, ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
CPU_TRACE = FIXTURES / "cpu-vllm-0.32.0"
NAMES = json.loads((FIXTURES / "kernel_names.json").read_text())["names"]


def trace_dir_with(tmp_path: Path, *files: Path) -> Path:
    folder = tmp_path / "trace"
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


def write_trace(path: Path, events: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 1, "traceEvents": events}))
    return path


# --- profiler settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.7.1", "0.7.3", "0.12.0"])
def test_old_vllm_gets_the_profiler_dir_variable(version, tmp_path):
    args, env = kernels.profiler_settings(version, tmp_path / "t")
    assert args == []
    # and the layer that turns off vLLM 0.7's with_stack=True, which crashed the engine at stop_profile
    assert env == {"VLLM_TORCH_PROFILER_DIR": str(tmp_path / "t"), "PYTHONPATH": str(kernels.PROFILER_LAYER)}
    assert (kernels.PROFILER_LAYER / "sitecustomize.py").is_file()


@pytest.mark.parametrize("version", ["0.13.0", "0.26.0", "0.32.0"])
def test_new_vllm_gets_the_profiler_config_flag(version, tmp_path):
    args, env = kernels.profiler_settings(version, tmp_path / "t")
    assert env == {}
    assert args[0] == "--profiler-config"
    config = json.loads(args[1])
    assert config["profiler"] == "torch"
    assert config["torch_profiler_dir"] == str(tmp_path / "t")


# --- classifier against real names -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", NAMES, ids=lambda e: f"{e['family']}:{e['name'][:60]}")
def test_real_kernel_names_classify_to_their_family(entry):
    assert kernels.classify(entry["name"]) == entry["family"]


def test_names_fixture_covers_every_family():
    assert {e["family"] for e in NAMES} == set(kernels.FAMILIES) | {kernels.OTHER}


def test_pytorch_flash_is_not_taken_for_vllm_fa2():
    # The errata's point: PyTorch's FA2 (via xformers) and vLLM's FA2 share kernel names up to the namespace.
    torch_names = [e["name"] for e in NAMES if e["family"] == "pytorch_flash"]
    vllm_names = [e["name"] for e in NAMES if e["family"] == "fa2"]
    assert torch_names and vllm_names
    assert any("flash::flash_fwd_kernel" in n for n in torch_names)
    assert {kernels.classify(n) for n in torch_names} == {"pytorch_flash"}
    assert {kernels.classify(n) for n in vllm_names} == {"fa2"}


def test_fa2_and_fa3_names_come_from_their_own_libraries():
    for entry in NAMES:
        if entry["family"] == "fa2":
            assert entry["library"].endswith("_vllm_fa2_C.abi3.so")
        if entry["family"] == "fa3":
            assert entry["library"].endswith("_vllm_fa3_C.abi3.so")


@pytest.mark.parametrize(
    "name",
    [
        "_C::onednn_mm",
        "triton_poi_fused_mul_silu_slice_1",
        "nvjet_sm90_hsh_192x8_64x8_4x1_v_bz_TNT",
        "my_fwd_kernel",
        "aten::_fwd_kernel_helper",
        "flash::flash_fwd_kernel_host_helper_fn_not_a_kernel_x",
    ],
)
def test_look_alike_names_are_other(name):
    # Substring patterns must not swallow names that only resemble an attention kernel.
    expected = "other" if "flash::flash_fwd_kernel" not in name else "fa2"
    assert kernels.classify(name) == expected


# --- attribution of the real CPU-engine trace --------------------------------------------------------------------


def test_cpu_trace_attribution():
    att = kernels.attribute(CPU_TRACE)
    assert att["device"] == "cpu"
    assert att["time_basis"] == "cpu_op_time"
    assert att["vllm_version"] == "0.32.0"
    assert len(att["trace_files"]) == 2  # worker rank 0 and the API server's frontend trace
    assert att["families_seen"] == ["cpu_attention"]
    cpu = att["families"]["cpu_attention"]
    # 2 layers x (2 prefill steps + 14 decode steps) = 32 calls of the attention op, as the trace recorded.
    assert cpu["count"] == 32
    assert cpu["kernels"][0]["name"] == "_C::cpu_attention_with_kv_cache"
    assert 0 < cpu["share"] < 1
    assert sum(f["share"] for f in att["families"].values()) == pytest.approx(1, abs=1e-4)
    assert att["phase_source"] == "step_annotation"
    assert att["phases"]["prefill"]["families"]["cpu_attention"]["count"] == 4
    assert att["phases"]["decode"]["families"]["cpu_attention"]["count"] == 28
    assert kernels.check_expectations(att, {"require": ["cpu_attention"], "forbid": ["fa2", "fa3"]}) == []


def test_cpu_attention_op_is_counted_once_not_with_its_wrapper():
    att = kernels.attribute(CPU_TRACE)
    other_names = {k["name"] for k in att["families"]["other"]["kernels"]}
    assert "_C::cpu_attention_with_kv_cache" not in other_names
    # The wrapper's own time stays in "other": the attention time is the op's, not the wrapper's.
    assert att["attention_time_us"] == pytest.approx(att["families"]["cpu_attention"]["time_us"])


# --- attribution of the real H100 traces (vLLM 0.26) -------------------------------------------------------------


def test_h100_fa3_trace(tmp_path):
    att = kernels.attribute(trace_dir_with(tmp_path, FIXTURES / "h100-vllm0.26-fa3.trace.json.gz"))
    assert att["device"] == "cuda"
    assert att["families_seen"] == ["fa3"]
    fa3 = att["families"]["fa3"]
    assert fa3["gpu_time_us"] == fa3["time_us"] > 0
    assert any("FlashAttnFwdSm90" in k["name"] for k in fa3["kernels"])
    assert "fa3" in att["phases"]["prefill"]["families"] and "fa3" in att["phases"]["decode"]["families"]
    assert kernels.check_expectations(att, {"require": ["fa3"], "forbid": ["fa2", "pytorch_flash"]}) == []
    violations = kernels.check_expectations(att, {"require": ["fa2"], "forbid": ["fa3"]})
    assert len(violations) == 2
    assert "forbidden kernel family fa3 ran" in violations[0]
    assert "required kernel family fa2 did not run (seen: fa3)" in violations[1]


def test_h100_fa2_trace(tmp_path):
    """FA2 forced on sm_90 through --attention-config flash_attn_version 2: split-KV kernels for prefill and decode,
    none of FA3's, so an arm that expects FA3 fails."""
    att = kernels.attribute(trace_dir_with(tmp_path, FIXTURES / "h100-vllm0.26-fa2.trace.json.gz"))
    assert att["families_seen"] == ["fa2"]
    names = {k["name"].split("<")[0] for k in att["families"]["fa2"]["kernels"]}
    assert {"void flash::flash_fwd_splitkv_kernel", "void flash::flash_fwd_splitkv_combine_kernel"} <= names
    assert "fa2" in att["phases"]["prefill"]["families"] and "fa2" in att["phases"]["decode"]["families"]
    assert kernels.check_expectations(att, {"require": ["fa2"], "forbid": ["fa3"]}) == []
    assert kernels.check_expectations(att, {"require": ["fa3"]}) == [
        "required kernel family fa3 did not run (seen: fa2)"
    ]


def test_h100_triton_trace(tmp_path):
    att = kernels.attribute(trace_dir_with(tmp_path, FIXTURES / "h100-vllm0.26-triton.trace.json.gz"))
    assert att["families_seen"] == ["triton_attention"]
    names = {k["name"] for k in att["families"]["triton_attention"]["kernels"]}
    assert {"kernel_unified_attention", "reduce_segments"} <= names
    assert "fa3" not in att["families"]
    assert kernels.check_expectations(att, {"forbid": ["fa2", "fa3", "pytorch_flash"]}) == []


def test_several_rank_traces_are_summed(tmp_path):
    fa3 = FIXTURES / "h100-vllm0.26-fa3.trace.json.gz"
    one = kernels.attribute(trace_dir_with(tmp_path / "a", fa3))
    folder = trace_dir_with(tmp_path / "b", fa3)
    shutil.copy(fa3, folder / "rank1.pt.trace.json.gz")
    two = kernels.attribute(folder)
    assert two["families"]["fa3"]["count"] == 2 * one["families"]["fa3"]["count"]
    assert two["families"]["fa3"]["share"] == pytest.approx(one["families"]["fa3"]["share"])


# --- phase fallbacks (constructed traces, real kernel names) -----------------------------------------------------


def _real(family: str, contains: str) -> str:
    return next(e["name"] for e in NAMES if e["family"] == family and contains in e["name"])


def test_unannotated_trace_splits_phases_by_kernel_name(tmp_path):
    # vLLM 0.7.x (V0) writes no step annotations; this mimics its XFORMERS arm on Ampere: prefill through
    # PyTorch's FA2, decode through vLLM's PagedAttention.
    events = [
        {"ph": "X", "cat": "kernel", "name": _real("pytorch_flash", "flash_fwd_kernel<"), "ts": 0, "dur": 30},
        {"ph": "X", "cat": "kernel", "name": _real("paged_attention", "paged_attention_v1"), "ts": 40, "dur": 10},
        {"ph": "X", "cat": "kernel", "name": _real("paged_attention", "v2_reduce"), "ts": 60, "dur": 5},
        {"ph": "X", "cat": "kernel", "name": "nvjet_sm90_hsh_192x8_64x8_4x1_v_bz_TNT", "ts": 70, "dur": 55},
    ]
    write_trace(tmp_path / "trace" / "host_1.pt.trace.json", events)
    att = kernels.attribute(tmp_path / "trace")
    assert att["phase_source"] == "kernel_name"
    assert att["phases"]["prefill"]["families"]["pytorch_flash"]["time_us"] == 30
    assert att["phases"]["decode"]["families"]["paged_attention"]["time_us"] == 15
    assert att["families"]["pytorch_flash"]["share"] == pytest.approx(0.3)
    assert att["attention_share"] == pytest.approx(0.45)
    violations = kernels.check_expectations(att, {"forbid": ["pytorch_flash"], "require": ["xformers_cutlass"]})
    assert len(violations) == 2


def test_kernel_outside_gpu_ranges_takes_the_step_of_its_launch(tmp_path):
    # CUDA-graph replays: the kernel has no GPU-side range around it; its launch call (same correlation id) sits
    # inside the CPU-side step annotation.
    events = [
        {"ph": "X", "cat": "user_annotation", "name": "execute_context_0(0)_generation_4(4)", "ts": 0, "dur": 100},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 10, "dur": 5, "args": {"correlation": 7}},
        {
            "ph": "X",
            "cat": "kernel",
            "name": _real("fa2", "splitkv_kernel<"),
            "ts": 500,
            "dur": 20,
            "args": {"correlation": 7},
        },
    ]
    write_trace(tmp_path / "trace" / "r.json", events)
    att = kernels.attribute(tmp_path / "trace")
    assert att["phases"]["decode"]["families"]["fa2"]["count"] == 1


@pytest.mark.parametrize(
    "annotation, phase",
    [
        ("execute_context_1(40)_generation_0(0)", "prefill"),
        ("execute_context_0(0)_generation_3(3)", "decode"),
        ("execute_context_1(512)_generation_2(2)", "mixed"),
        ("execute_context_0(0)_generation_0(0)", "idle"),
        ("execute_514_context_1(sq512sk512sqsq262144sqsk262144)_generation_2(sq2sk90sqsq2sqsk90)", "mixed"),
        ("execute_model", None),
    ],
)
def test_step_annotation_phases(annotation, phase):
    assert kernels.step_phase(annotation) == phase


# --- bad input ---------------------------------------------------------------------------------------------------


def test_missing_trace_folder(tmp_path):
    with pytest.raises(kernels.KernelTraceError, match="does not exist"):
        kernels.attribute(tmp_path / "nope", wait_s=0)


def test_empty_trace_folder(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(kernels.KernelTraceError, match="no torch profiler trace"):
        kernels.attribute(tmp_path / "t", wait_s=0)


def test_truncated_gzip_names_the_file(tmp_path):
    data = (FIXTURES / "h100-vllm0.26-triton.trace.json.gz").read_bytes()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "cut.pt.trace.json.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(kernels.KernelTraceError, match="cut.pt.trace.json.gz"):
        kernels.attribute(tmp_path / "t", wait_s=0)


def test_json_that_is_no_trace(tmp_path):
    (tmp_path / "t").mkdir()
    with gzip.open(tmp_path / "t" / "x.json.gz", "wt") as fh:
        json.dump([1, 2], fh)
    with pytest.raises(AttnbenchError, match="no traceEvents"):
        kernels.attribute(tmp_path / "t", wait_s=0)


def test_unknown_family_in_expectations():
    with pytest.raises(
        ConfigError, match="unknown kernel families \\['flashattention'\\].*allowed values: pytorch_flash"
    ):
        kernels.check_expectations({"families": {}}, {"forbid": ["flashattention"]})


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_attribute_writes_kernels_json_and_fails_on_violation(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    status = cli.main(["kernels", "attribute", str(CPU_TRACE), "--out", str(out), "--require", "fa2"])
    assert status == 1
    written = json.loads(out.read_text())
    assert written["violations"] == ["required kernel family fa2 did not run (seen: cpu_attention)"]
    assert "VIOLATION" in capsys.readouterr().out
    assert cli.main(["kernels", "attribute", str(CPU_TRACE), "--out", str(out), "--require", "cpu_attention"]) == 0


def test_cli_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    assert cli.main(["kernels", "attribute", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_summary_names_the_dominant_family_per_phase():
    short = kernels.summary(kernels.attribute(CPU_TRACE))
    assert short["dominant_by_phase"]["prefill"] == "cpu_attention"
    assert short["families_seen"] == ["cpu_attention"]


def test_h100_torch_attention_trace_separates_pytorch_flash_from_cutlass(tmp_path):
    # Real H100 trace of PyTorch's two attention kernels: what xformers' flash and cutlass ops run.
    att = kernels.attribute(trace_dir_with(tmp_path, FIXTURES / "torch-cuda-sdpa.trace.json.gz"))
    assert att["device"] == "cuda"
    assert {f: v["count"] for f, v in att["families"].items()} == {"pytorch_flash": 3, "xformers_cutlass": 3}
    assert att["attention_share"] == pytest.approx(1.0)
    assert att["phase_source"] == "kernel_name"  # no vLLM step annotations in a bare torch trace
    assert kernels.check_expectations(att, {"forbid": ["pytorch_flash"]})[0].startswith(
        "forbidden kernel family pytorch_flash ran: 3 kernels"
    )


def test_waits_for_a_trace_that_is_still_being_written(tmp_path):
    # vLLM 0.7.x answers /stop_profile before the engine has written the trace (one-way RPC).
    import threading
    import time

    data = (FIXTURES / "h100-vllm0.26-triton.trace.json.gz").read_bytes()
    folder = tmp_path / "trace"
    folder.mkdir()
    target = folder / "host_123.1.pt.trace.json.gz"

    def write_slowly():
        time.sleep(0.3)
        with target.open("wb") as fh:
            fh.write(data[: len(data) // 3])
            fh.flush()
            time.sleep(0.8)
            fh.write(data[len(data) // 3 :])

    writer = threading.Thread(target=write_slowly)
    writer.start()
    loaded = kernels.load_traces(folder, wait_s=20, poll_s=0.1)
    writer.join()
    assert [p.name for p, _ in loaded] == [target.name]
    assert kernels.attribute(folder, wait_s=0)["families_seen"] == ["triton_attention"]


def test_waiting_gives_up_at_the_deadline_with_the_usual_error(tmp_path):
    (tmp_path / "trace").mkdir()
    with pytest.raises(kernels.KernelTraceError, match="no torch profiler trace"):
        kernels.attribute(tmp_path / "trace", wait_s=0.5)
