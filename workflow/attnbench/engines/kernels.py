"""Which attention kernels actually ran: torch profiler traces -> kernel families -> shares of time.

The article's first conclusion was wrong because a backend label (XFORMERS) did not say which kernels ran: xformers
prefilled through PyTorch's bundled FlashAttention-2. So each arm can capture a profiler trace around a short probe,
and this module names the kernel family of every GPU kernel (or, on the CPU engine, every attention op), sums their
time per family and per phase (prefill / decode), and checks the arm's declared expectations.

Family patterns come from real symbol tables (tests/fixtures/traces/kernel_names.json says which library each
name came from). Kernel names in traces are demangled C++ (`void flash::flash_fwd_kernel<...>(...)`) or bare Triton
function names (`kernel_unified_attention`), so patterns match substrings, never whole names.

`attnbench kernels attribute TRACE_DIR` writes kernels.json; `attnbench kernels classify NAME` names one kernel.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.config import version_tuple
from attnbench.errors import AttnbenchError, ConfigError
from attnbench.paths import REPO_ROOT

KERNELS_SCHEMA = 1


class KernelTraceError(AttnbenchError):
    """A trace folder without traces, or a trace that is no torch profiler Chrome trace."""


# vLLM 0.13 added --profiler-config (PR #29912) and deprecated VLLM_TORCH_PROFILER_DIR; 0.16 removed the variable
# (PR #33536). Verified: 0.7.1 reads only the variable (envs.py, api_server.py registers /start_profile only when it
# is set); 0.26.0 and 0.32.0 have no such variable and register the endpoints only when profiler_config.profiler is set.
PROFILER_CONFIG_VERSION = (0, 13)
PROFILER_LAYER = REPO_ROOT / "containers" / "layers" / "profiler-no-stack"

# Order matters: the first family whose pattern matches wins. pytorch_flash precedes fa2 because PyTorch's copy of
# FlashAttention-2 lives in namespace pytorch_flash:: and its names contain "flash::flash_fwd" as a substring.
FAMILY_PATTERNS: list[tuple[str, re.Pattern]] = [
    # PyTorch's bundled FlashAttention-2 (libtorch_cuda), what xformers' flash op calls when xformers was built
    # without its own copy (0.0.28.post3 wheels: flash.py falls back to torch.ops.aten._flash_attention_forward).
    ("pytorch_flash", re.compile(r"pytorch_flash::")),
    # vLLM's flash-attn fork, FA3 code base (_vllm_fa3_C): FlashAttnFwdSm90 (Hopper), FlashAttnFwdSm80 (the FA3
    # code compiled for Ampere in 0.7.1), its split-KV combine kernel and its varlen scheduler prologue.
    ("fa3", re.compile(r"flash::FlashAttnFwdSm\d+|flash::FlashAttnFwdCombine|flash::prepare_varlen_num_blocks")),
    # vLLM's flash-attn fork, FA2 code base (_vllm_fa2_C): flash_fwd_kernel (prefill), flash_fwd_splitkv_kernel and
    # flash_fwd_splitkv_combine_kernel (decode with KV cache), flash_fwd_sparse_kernel.
    ("fa2", re.compile(r"(?<![A-Za-z0-9_])flash::flash_fwd_(?:splitkv_combine_|splitkv_|sparse_)?kernel")),
    # CUTLASS memory-efficient attention (xformers' cutlass op; in 0.0.28.post3 it runs PyTorch's copy through
    # aten::_efficient_attention_forward): fmha_cutlassF_<dtype>_<aligned>_<tile>_<arch>.
    ("xformers_cutlass", re.compile(r"fmha_cutlassF|PyTorchMemEffAttention::AttentionKernel")),
    # vLLM's own PagedAttention CUDA kernels (decode under XFORMERS in 0.7.x).
    ("paged_attention", re.compile(r"(?<![A-Za-z0-9_])(?:vllm::)?paged_attention_v[12](?:_reduce)?_kernel")),
    # vLLM's Triton attention (JIT kernels, named after the Python function).
    (
        "triton_attention",
        re.compile(
            r"kernel_unified_attention|(?<![A-Za-z0-9_])reduce_segments|kernel_paged_attention_2d"
            r"|(?<![A-Za-z0-9_])_fwd_(?:grouped_)?kernel(?:_stage[12]|_alibi)?(?![A-Za-z0-9_])"
        ),
    ),
    # FlashInfer's attention kernels only (include/flashinfer/attention/ of flashinfer-python 0.6.14, vLLM 0.26's):
    # its sampling, norm and KV-append kernels live in the same namespace and run under other backends too.
    (
        "flashinfer",
        re.compile(
            r"flashinfer::(?:\w+::)*(?:(?:Batch|Single)(?:Prefill|Decode)With\w*|PrefillWithKVCacheKernel"
            r"|\w*PODWithKVCache\w*|BatchMLA\w*|\w*MergeState\w*|\w*AttentionSum\w*)"
            r"|(?<![A-Za-z0-9_])(?:Batch|Single)(?:Prefill|Decode)WithPagedKVCache"
        ),
    ),
    # The CPU engine's attention op (vLLM >= 0.11 CPU backend) and older CPU SDPA paths; only CPU-op traces count.
    (
        "cpu_attention",
        re.compile(r"cpu_attention|_C::paged_attention|_scaled_dot_product_flash_attention_for_cpu|ipex.*attention"),
    ),
]
FAMILIES = [name for name, _ in FAMILY_PATTERNS]
OTHER = "other"

# Which families run in decode by name alone, for traces without vLLM's step annotations (vLLM 0.7.x, V0).
DECODE_BY_NAME = re.compile(r"splitkv|paged_attention|FlashAttnFwdCombine|BatchDecode|SingleDecode|_stage[12]")

# vLLM V1 wraps each engine step in a record_function range named for its batch, e.g.
# "execute_context_1(40)_generation_0(0)" or, with detailed annotations, "execute_41_context_1(sq40sk40...)...".
STEP_ANNOTATION = re.compile(r"^execute_(?:\d+_)?context_(\d+)\(.*?\)_generation_(\d+)\(")

GPU_KERNEL_CATS = {"kernel", "Kernel"}
TRACE_SUFFIXES = (".json", ".json.gz")


def profiler_settings(vllm_version: str, trace_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Server args and env that make this vLLM version write torch profiler traces to trace_dir and serve
    POST /start_profile and /stop_profile."""
    trace_dir = str(Path(trace_dir))
    if version_tuple(vllm_version) < PROFILER_CONFIG_VERSION:
        # These versions hard-code with_stack=True, which crashed vLLM 0.7.1's engine at stop_profile on the H100:
        # the profiler-no-stack layer (containers/layers/) turns it off from outside.
        return [], {"VLLM_TORCH_PROFILER_DIR": trace_dir, "PYTHONPATH": str(PROFILER_LAYER)}
    # Python stacks would make the trace tens of MiB for a few requests; kernel names are all we need.
    config = {"profiler": "torch", "torch_profiler_dir": trace_dir, "torch_profiler_with_stack": False}
    return ["--profiler-config", json.dumps(config, sort_keys=True)], {}


def classify(name: str) -> str:
    """Kernel family of one kernel or op name ('other' when it is no attention kernel we know)."""
    for family, pattern in FAMILY_PATTERNS:
        if pattern.search(name):
            return family
    return OTHER


@dataclass
class Span:
    """One counted piece of time: a GPU kernel, or a top-level CPU op."""

    name: str
    start: float  # us, trace clock
    dur: float  # us
    family: str
    phase: str = "unknown"


@dataclass
class _Steps:
    """Step annotation intervals of one trace, sorted, for phase lookup by time."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)

    def add(self, start: float, dur: float, phase: str) -> None:
        self.starts.append(start)
        self.ends.append(start + dur)
        self.phases.append(phase)

    def sort(self) -> None:
        order = sorted(range(len(self.starts)), key=self.starts.__getitem__)
        self.starts = [self.starts[i] for i in order]
        self.ends = [self.ends[i] for i in order]
        self.phases = [self.phases[i] for i in order]

    def phase_at(self, ts: float) -> str | None:
        i = bisect.bisect_right(self.starts, ts) - 1
        if i >= 0 and ts <= self.ends[i]:
            return self.phases[i]
        return None


def step_phase(annotation: str) -> str | None:
    """'prefill', 'decode', 'mixed' or 'idle' for a vLLM step annotation; None for any other range name."""
    match = STEP_ANNOTATION.match(annotation)
    if not match:
        return None
    context, generation = int(match.group(1)), int(match.group(2))
    if context and generation:
        return "mixed"
    if context:
        return "prefill"
    return "decode" if generation else "idle"


def trace_files(trace_dir: Path) -> list[Path]:
    """All Chrome trace files under trace_dir (one per worker rank, plus the API server's frontend trace)."""
    trace_dir = Path(trace_dir)
    if not trace_dir.is_dir():
        raise KernelTraceError(f"trace folder {trace_dir} does not exist (was the profiler enabled on the server?)")
    files = sorted(p for p in trace_dir.rglob("*") if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
    if not files:
        raise KernelTraceError(
            f"no torch profiler trace (*.json, *.json.gz) under {trace_dir}: the server did not write one "
            "(profiler not enabled, or /stop_profile not called)"
        )
    return files


def load_traces(trace_dir: Path, wait_s: float = 0.0, poll_s: float = 1.0) -> list[tuple[Path, dict]]:
    """Every trace under trace_dir, read. Retries for up to wait_s while the folder has no trace or a trace does not
    read to its end: vLLM 0.7.x answers POST /stop_profile before its engine process has written the trace (a
    one-way RPC), and a gzip file being written is truncated. After wait_s the error names what is wrong."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return [(path, load_trace(path)) for path in trace_files(trace_dir)]
        except KernelTraceError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_s)


def load_trace(path: Path) -> dict:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            trace = json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KernelTraceError(f"trace {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise KernelTraceError(f"trace {path} has no traceEvents list: not a torch profiler Chrome trace")
    return trace


def _spans_of_trace(trace: dict) -> tuple[str, list[Span], str]:
    """(device, spans, phase source) of one trace. device 'cuda' when it holds GPU kernels, else 'cpu'."""
    events = [e for e in trace["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in events if e.get("cat") in GPU_KERNEL_CATS]
    cpu_steps, gpu_steps = _Steps(), _Steps()
    for e in events:
        phase = step_phase(str(e.get("name", "")))
        if phase is None:
            continue
        if e.get("cat") == "gpu_user_annotation":
            gpu_steps.add(float(e["ts"]), float(e["dur"]), phase)
        elif e.get("cat") == "user_annotation":
            cpu_steps.add(float(e["ts"]), float(e["dur"]), phase)
    cpu_steps.sort()
    gpu_steps.sort()
    annotated = bool(cpu_steps.starts or gpu_steps.starts)
    if kernels:
        spans = _gpu_spans(events, kernels, cpu_steps, gpu_steps)
        return "cuda", spans, "step_annotation" if annotated else "kernel_name"
    spans = _cpu_spans(events, cpu_steps)
    return "cpu", spans, "step_annotation" if annotated else "none"


def _gpu_spans(events: list[dict], kernels: list[dict], cpu_steps: _Steps, gpu_steps: _Steps) -> list[Span]:
    # A kernel's step: the GPU-side range around it if Kineto recorded one, else the CPU-side step around the
    # runtime call that launched it (same correlation id; covers CUDA-graph replays), else guessed by its name.
    launch_ts: dict = {}
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver"):
            corr = (e.get("args") or {}).get("correlation")
            if corr is not None:
                launch_ts[corr] = float(e["ts"])
    spans = []
    for k in kernels:
        name = str(k.get("name", ""))
        family = classify(name)
        ts = float(k["ts"])
        phase = gpu_steps.phase_at(ts)
        if phase is None:
            corr = (k.get("args") or {}).get("correlation")
            if corr in launch_ts:
                phase = cpu_steps.phase_at(launch_ts[corr])
        if phase is None and not (cpu_steps.starts or gpu_steps.starts) and family != OTHER:
            phase = "decode" if DECODE_BY_NAME.search(name) else "prefill"
        spans.append(Span(name, ts, float(k["dur"]), family, phase or "unknown"))
    return spans


def _cpu_spans(events: list[dict], cpu_steps: _Steps) -> list[Span]:
    # CPU ops nest (aten::linear > aten::addmm). Count each top-level op once: an attention op with its whole
    # duration, any other op with its self time, so the total is the time spent inside ops.
    spans = []
    by_thread: dict = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for ops in by_thread.values():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack: list[list] = []  # [end, span or None (inside attention), child time]
        for e in ops:
            ts, dur = float(e["ts"]), float(e["dur"])
            while stack and ts >= stack[-1][0]:
                _close(stack.pop(), spans)
            if stack:
                stack[-1][2] += dur
            inside_attention = any(frame[1] is None or frame[1].family != OTHER for frame in stack)
            if inside_attention:
                stack.append([ts + dur, None, 0.0])
                continue
            name = str(e.get("name", ""))
            span = Span(name, ts, dur, classify(name), cpu_steps.phase_at(ts) or "unknown")
            stack.append([ts + dur, span, 0.0])
        while stack:
            _close(stack.pop(), spans)
    return spans


def _close(frame: list, spans: list[Span]) -> None:
    _end, span, child_time = frame
    if span is None:
        return
    if span.family == OTHER:
        span.dur = max(span.dur - child_time, 0.0)
    spans.append(span)


def _family_table(spans: list[Span], total: float, top: int) -> dict:
    table: dict = {}
    attention_total = sum(s.dur for s in spans if s.family != OTHER)
    for family in FAMILIES + [OTHER]:
        mine = [s for s in spans if s.family == family]
        if not mine:
            continue
        time_us = sum(s.dur for s in mine)
        per_name: dict = defaultdict(lambda: [0, 0.0])
        for s in mine:
            per_name[s.name][0] += 1
            per_name[s.name][1] += s.dur
        names = sorted(per_name.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]
        table[family] = {
            "time_us": round(time_us, 3),
            "count": len(mine),
            "share": round(time_us / total, 6) if total else 0.0,
            "attention_share": round(time_us / attention_total, 6) if family != OTHER and attention_total else None,
            "kernels": [{"name": n, "count": c, "time_us": round(t, 3)} for n, (c, t) in names],
        }
    return table


def attribute(trace_dir: Path, *, top_kernels: int = 5, wait_s: float = 120.0) -> dict:
    """Kernel attribution of every trace under trace_dir (see docs/DESIGN.md, kernels.json). It first waits up to
    wait_s for the traces to be complete, so it can be called right after POST /stop_profile; complete traces cost
    no wait."""
    loaded = load_traces(Path(trace_dir), wait_s)
    spans: list[Span] = []
    devices, sources, versions = set(), set(), set()
    for _path, trace in loaded:
        device, these, source = _spans_of_trace(trace)
        if not these:
            continue  # e.g. the API server's frontend trace: no kernels, no ops of the model
        spans.extend(these)
        devices.add(device)
        sources.add(source)
        if trace.get("vllm_version"):
            versions.add(str(trace["vllm_version"]))
    # GPU kernels are what ran on the device; a CPU-op view of a GPU run would double count launches.
    device = "cuda" if "cuda" in devices else ("cpu" if devices else None)
    if device == "cuda":
        spans = [s for s in spans if s.family != "cpu_attention"]
    total = sum(s.dur for s in spans)
    families = _family_table(spans, total, top_kernels)
    if device == "cuda":
        for entry in families.values():
            entry["gpu_time_us"] = entry["time_us"]
    phases = {}
    for phase in sorted({s.phase for s in spans}):
        mine = [s for s in spans if s.phase == phase]
        phase_total = sum(s.dur for s in mine)
        phases[phase] = {"time_us": round(phase_total, 3), "families": _family_table(mine, phase_total, top_kernels)}
    attention = {f: v for f, v in families.items() if f != OTHER}
    return {
        "schema": KERNELS_SCHEMA,
        "device": device,
        "time_basis": {"cuda": "gpu_kernel_time", "cpu": "cpu_op_time"}.get(device),
        "trace_files": [str(p.relative_to(trace_dir)) for p, _ in loaded],
        "vllm_version": sorted(versions)[0] if len(versions) == 1 else sorted(versions) or None,
        "total_time_us": round(total, 3),
        "attention_time_us": round(sum(v["time_us"] for v in attention.values()), 3),
        "attention_share": round(sum(v["time_us"] for v in attention.values()) / total, 6) if total else 0.0,
        "families_seen": sorted(attention, key=lambda f: -attention[f]["time_us"]),
        "families": families,
        "phase_source": sorted(sources)[0] if len(sources) == 1 else sorted(sources),
        "phases": phases,
    }


def check_expectations(attribution: dict, expect: dict) -> list[str]:
    """Violations of an arm's expect_kernels ({require: [...], forbid: [...]}); empty when all hold.
    A forbidden family is violated by a single kernel of it; a required one by its absence."""
    unknown = [f for key in ("require", "forbid") for f in expect.get(key) or [] if f not in FAMILIES]
    if unknown:
        raise ConfigError(f"expect_kernels: unknown kernel families {unknown}; allowed values: {', '.join(FAMILIES)}")
    families = attribution.get("families") or {}
    violations = []
    for family in expect.get("forbid") or []:
        seen = families.get(family)
        if seen and seen.get("count", 0) > 0:
            names = ", ".join(k["name"][:80] for k in seen.get("kernels", [])[:2])
            violations.append(
                f"forbidden kernel family {family} ran: {seen['count']} kernels, "
                f"{100 * seen.get('share', 0):.1f}% of {attribution.get('time_basis') or 'time'} ({names})"
            )
    for family in expect.get("require") or []:
        if family not in families or families[family].get("count", 0) == 0:
            seen_families = attribution.get("families_seen") or sorted(f for f in families if f != OTHER)
            seen = ", ".join(seen_families) or "no attention kernels"
            violations.append(f"required kernel family {family} did not run (seen: {seen})")
    return violations


def summary(attribution: dict) -> dict:
    """The short form for run.json and tables: family -> share, per phase the dominant attention family."""
    dominant = {}
    for phase, entry in (attribution.get("phases") or {}).items():
        attention = {f: v["time_us"] for f, v in entry["families"].items() if f != OTHER}
        dominant[phase] = max(attention, key=attention.get) if attention else None
    return {
        "device": attribution.get("device"),
        "families": {f: v["share"] for f, v in (attribution.get("families") or {}).items()},
        "families_seen": attribution.get("families_seen") or [],
        "attention_share": attribution.get("attention_share"),
        "dominant_by_phase": dominant,
    }


def _cmd_attribute(args: argparse.Namespace) -> int:
    attribution = attribute(Path(args.trace_dir), wait_s=args.wait)
    expect = {"require": args.require or [], "forbid": args.forbid or []}
    attribution["violations"] = check_expectations(attribution, expect)
    out = Path(args.out) if args.out else Path(args.trace_dir).parent / "kernels.json"
    out.write_text(json.dumps(attribution, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"{attribution['device']} trace, {attribution['total_time_us'] / 1000:.3f} ms "
        f"({attribution['time_basis']}), attention {100 * attribution['attention_share']:.1f}%"
    )
    for family, entry in attribution["families"].items():
        phases = ", ".join(
            f"{p} {entry_p['families'][family]['time_us'] / 1000:.3f} ms"
            for p, entry_p in attribution["phases"].items()
            if family in entry_p["families"]
        )
        print(f"  {family:17s} {100 * entry['share']:6.2f}%  {entry['count']:6d} kernels  [{phases}]")
    for violation in attribution["violations"]:
        print(f"VIOLATION: {violation}")
    print(f"wrote {out}")
    return 1 if attribution["violations"] else 0


def _cmd_classify(args: argparse.Namespace) -> int:
    for name in args.names:
        print(f"{classify(name)}\t{name}")
    return 0


def register(subparsers) -> None:
    text = "attention kernel attribution from torch profiler traces"
    parser = subparsers.add_parser("kernels", help=text, description=text)
    sub = parser.add_subparsers(dest="kernels_command", required=True, metavar="ACTION")
    text = "kernel families and their share of time in a trace folder -> kernels.json"
    p = sub.add_parser("attribute", help=text, description=text)
    p.add_argument("trace_dir", help="folder of torch profiler traces (*.json, *.json.gz), searched recursively")
    p.add_argument("--out", help="output file (default: TRACE_DIR/../kernels.json)")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the server to finish writing its traces (default 0)",
    )
    p.add_argument(
        "--require",
        action="append",
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"family that must run (repeatable): {', '.join(FAMILIES)}",
    )
    p.add_argument(
        "--forbid",
        action="append",
        choices=FAMILIES,
        metavar="FAMILY",
        help="family that must not run (repeatable); exit status 1 when an expectation fails",
    )
    p.set_defaults(func=_cmd_attribute)
    text = "print the kernel family of kernel names"
    p = sub.add_parser("classify", help=text, description=text)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=_cmd_classify)
