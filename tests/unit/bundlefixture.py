"""A small but complete experiment folder, written from the record dataclasses, for the bundle/verify/compare
unit tests: two arms x two repeats, one workload at two concurrency levels, run.json files, a server log holding
secrets, derived tables from aggregate.write_tables, a plot and a report."""

from __future__ import annotations

import json
import random
from pathlib import Path

from attnbench.analysis import aggregate, report
from attnbench.measure.records import LevelRecord, RequestRecord, append_jsonl

SECRET = "sk-test-0123456789abcdef"  # the API key the fixture's "server" was given
HF_SECRET = "hf_AbCdEfGhIjKlMnOpQrStUv"
KEY_ENV = "ATTNBENCH_TEST_API_KEY"


def make_config(experiment: str = "unit", repeats: int = 2) -> dict:
    return {
        "experiment": experiment,
        "engine": {"version": "0.32.0", "runtime": "venv", "device": "cpu", "env": {}},
        "model": {"name": "tiny-qwen2", "dtype": "bfloat16", "max_model_len": 512},
        "arms": [
            {
                "name": "fast",
                "backend": "CPU_ATTN",
                "expect_backend": "CPU_ATTN",
                "allow_backend_mismatch": False,
                "expect_kernels": {"require": [], "forbid": []},
            },
            {
                "name": "slow",
                "backend": "CPU_ATTN",
                "expect_backend": "CPU_ATTN",
                "allow_backend_mismatch": False,
                "expect_kernels": {"require": [], "forbid": []},
            },
        ],
        "baseline": "fast",
        "workloads": {"short": {"prompt_tokens": 8, "output_tokens": 4, "concurrency": [1, 2]}},
        "sweep": {
            "api": "chat",
            "repeats": repeats,
            "warmup_requests": 1,
            "requests_per_level": 2,
            "ignore_eos": True,
            "seed": 0,
            "latency_probe_gets": 3,
            "api_key_env": KEY_ENV,
        },
        "kernels": {"probe": False},
        "gpu": {"type": "auto"},
    }


def write_run(
    exp_dir: Path,
    cfg: dict,
    arm: dict,
    repeat: int,
    *,
    speed: float,
    rng: random.Random,
    status: str = "ok",
    gpu_type: str = "cpu-x86_64",
) -> None:
    rdir = exp_dir / "runs" / arm["name"] / f"rep{repeat}"
    rdir.mkdir(parents=True, exist_ok=True)
    t = 1764072000.0 + 1000 * repeat + (0 if arm["name"] == "fast" else 500)
    started = t
    for wname, wl in cfg["workloads"].items():
        for conc in wl["concurrency"]:
            n = cfg["sweep"]["requests_per_level"]
            ids = dict(experiment=cfg["experiment"], arm=arm["name"], repeat=repeat, workload=wname, concurrency=conc)
            for phase, count in (("warmup", cfg["sweep"]["warmup_requests"]), ("measure", n)):
                window_start = t
                for i in range(count):
                    dur = (0.5 + rng.random() * 0.05) / speed
                    # the stream fits its request at any length (plausibility checks ttft + sum(itl) <= end - start)
                    gap = min(dur / 5, 0.75 * dur / max(wl["output_tokens"] - 1, 1))
                    append_jsonl(
                        rdir / "records.jsonl",
                        RequestRecord(
                            **ids,
                            phase=phase,
                            index=i,
                            request_id=f"{cfg['experiment']}-{arm['name']}-r{repeat}-{wname}-c{conc}-{phase}-{i}",
                            start=round(t, 6),
                            end=round(t + dur, 6),
                            ttft=round(dur / 5, 6),
                            itl=[round(gap, 6)] * (wl["output_tokens"] - 1),
                            prompt_tokens=wl["prompt_tokens"],
                            completion_tokens=wl["output_tokens"],
                            http_status=200,
                            ok=True,
                            prompt_seed=i,
                        ),
                    )
                    t += dur
            append_jsonl(
                rdir / "levels.jsonl",
                LevelRecord(
                    **ids,
                    requests=n,
                    warmup=cfg["sweep"]["warmup_requests"],
                    start=round(window_start, 6),
                    end=round(t, 6),
                    latency_ms=[1.0, 1.1, 0.9],
                ),
            )
    (rdir / "server.log").write_text(
        "INFO [selector.py:42] Using CPU_ATTN attention backend\n"
        f"INFO args: --api-key {SECRET} --port 8000\n"
        f"DEBUG header Authorization: Bearer {SECRET}\n"
        f"DEBUG token {HF_SECRET}\n",
        encoding="utf-8",
    )
    run = {
        "schema": 1,
        "experiment": cfg["experiment"],
        "arm": arm["name"],
        "repeat": repeat,
        "status": status,
        "error": None if status == "ok" else "server died",
        "started": _iso(started),
        "finished": _iso(t),
        "base_url": "http://127.0.0.1:8000",
        "engine": {
            "runtime": "venv",
            "version": "0.32.0",
            "image": None,
            "digest": None,
            "lock": "engine-lock.txt",
            "versions": {"vllm": "0.32.0", "torch": "2.13.0+cpu", "cuda": None, "xformers": None},
        },
        "server": {
            "argv": ["python", "-m", "vllm", "--api-key", SECRET],
            "env": {"VLLM_API_KEY": SECRET},
            "ready_s": 40.0,
            "pid": 1,
            "exit_code": None,
        },
        "backend": {
            "requested": arm["backend"],
            "logged": "CPU_ATTN",
            "log_lines": ["Using CPU_ATTN attention backend"],
            "match": True,
        },
        "kernels": None,
        "host": {
            "hostname_hash": "abc123",
            "cpu": "x86_64",
            "gpus": [],
            "gpu_type": gpu_type,
            "driver": None,
            "cuda": None,
        },
        "slurm_job_id": None,
    }
    (rdir / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def write_derived(exp_dir: Path, cfg: dict) -> None:
    """Tables as the aggregate rule writes them (levels.csv, .parquet, markdown), a plot and a report."""
    aggregate.write_tables(exp_dir, cfg)
    (exp_dir / "plots").mkdir(exist_ok=True)
    (exp_dir / "plots" / "throughput.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    report.write_report(exp_dir, cfg)  # verify regenerates report.md from the tables and compares


def make_experiment(
    root: Path,
    *,
    experiment: str = "unit",
    slow_factor: float = 0.5,
    missing_arm: bool = False,
    seed: int = 1,
    speedup: float = 1.0,
    gpu_type: str = "cpu-x86_64",
    workloads: dict | None = None,
    repeats: int = 2,
) -> tuple[Path, dict]:
    """speedup scales both arms' speed (a faster machine); slow_factor is the slow arm's speed relative to fast."""
    cfg = make_config(experiment, repeats)
    cfg["workloads"] = workloads or cfg["workloads"]
    exp_dir = root / experiment
    rng = random.Random(seed)
    for arm in cfg["arms"]:
        if missing_arm and arm["name"] == "slow":
            continue
        for k in range(cfg["sweep"]["repeats"]):
            speed = speedup * (1.0 if arm["name"] == "fast" else slow_factor)
            write_run(exp_dir, cfg, arm, k, speed=speed, rng=rng, gpu_type=gpu_type)
    write_derived(exp_dir, cfg)
    return exp_dir, cfg
