"""`attnbench run-arm`: one server start for one (arm, repeat), every workload swept against it, then stop.

Writes the run folder (docs/DESIGN.md): records.jsonl and levels.jsonl (appended by the sweep as data arrives),
server.log, kernels.json (probe) and run.json, which is written in a `finally` block so a failed run says why.
The server runs in its own process group and is stopped on success, failure, Ctrl-C and SIGTERM.

A failed run's folder is copied to results/<exp>/failed/ before exiting non-zero, because Snakemake deletes the
outputs of a failed job and the raw records already measured must survive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from attnbench.config import arm_by_name, engine_id, load_config, workloads_of
from attnbench.engines import kernels, provenance
from attnbench.engines.backend import check_backend, check_quantization, parse_backend, parse_quantization
from attnbench.engines.dockerserver import DockerServer
from attnbench.engines.engine import engine_python, launch_spec
from attnbench.engines.files import tree_digest
from attnbench.engines.image_provenance import image_provenance
from attnbench.engines.server import Server, check_cpus, free_port
from attnbench.errors import AttnbenchError, ServerError
from attnbench.measure.gpumon import GpuMonitor
from attnbench.measure.gpumon import summarize as gpu_summary
from attnbench.measure.servermetrics import DEFAULT_INTERVAL_S as DEFAULT_SCRAPE_S
from attnbench.measure.servermetrics import Scraper
from attnbench.measure.servermetrics import run_summary as servermetrics_summary


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every `finally` (server stop, run.json) still runs."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_paths(cfg: dict, exp_dir: Path) -> tuple[Path, Path | None]:
    """(model dir, tokenizer dir) the server loads: the synthetic pair under results/<exp>/models/, or the real path
    (its tokenizer defaults to the model folder itself, which vLLM uses when --tokenizer is absent)."""
    model = cfg["model"]
    if model.get("architecture"):
        base = exp_dir / "models" / model["name"]
        tokenizer = Path(model["tokenizer"]) if model.get("tokenizer") else base / "tokenizer"
        return (base / "model").resolve(), tokenizer.resolve()
    tokenizer = Path(model["tokenizer"]).resolve() if model.get("tokenizer") else None
    return Path(model["path"]).resolve(), tokenizer


def _get_json(client: httpx.Client, url: str) -> dict | None:
    try:
        reply = client.get(url, timeout=30)
        reply.raise_for_status()
        return reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _make_server(spec, log_path: Path, base_url: str, startup_timeout_s: float):
    if spec.runtime == "docker":
        return DockerServer(spec, log_path, base_url, startup_timeout_s)
    return Server(spec, log_path, base_url, startup_timeout_s)


def _versions_argv(cfg: dict, spec) -> list[str] | None:
    runtime = cfg["engine"]["runtime"]
    if runtime in ("venv", "native"):
        return [engine_python(cfg)]
    return None  # containers: the image rules record the versions seen inside (image_provenance)


def _layer_digests(env: dict[str, str]) -> dict[str, str]:
    """sha256 over the files of each folder the server gets on PYTHONPATH (a container variant, the profiler layer):
    code that changes the engine's behaviour from outside, so a run records exactly which."""
    folders = [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {str(p): tree_digest(p)["sha256"] for p in folders if p.is_dir()}


def _kernel_probe(cfg, arm, server_url, model_name, out_dir, headers, ids, api_key) -> dict:
    from attnbench.measure.sweep import send_probe

    workloads = workloads_of(cfg)
    name = cfg["kernels"].get("probe_workload")
    workload = next((w for w in workloads if w.name == name), workloads[0])
    with httpx.Client(headers=headers) as client:
        client.post(f"{server_url}/start_profile", timeout=120).raise_for_status()
        try:
            asyncio.run(
                send_probe(
                    server_url,
                    model_name,
                    workload,
                    cfg["kernels"]["probe_requests"],
                    cfg["sweep"],
                    out_dir,
                    api_key=api_key,
                    output_tokens=cfg["kernels"]["probe_output_tokens"],
                    **ids,
                )
            )
        finally:
            client.post(f"{server_url}/stop_profile", timeout=600).raise_for_status()
        # vLLM 0.7.1 with a stack-capturing profiler died in its engine process at stop_profile while the API
        # server went on answering /health: only a real request shows that the engine survived the probe.
        try:
            reply = client.post(
                f"{server_url}/v1/completions",
                timeout=120,
                json={"model": model_name, "prompt": "probe", "max_tokens": 1},
            )
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServerError(
                f"the engine stopped serving after the kernel probe's /stop_profile ({exc}); see server.log"
            ) from None
    attribution = kernels.attribute(out_dir / "trace")
    (out_dir / "kernels.json").write_text(json.dumps(attribution, indent=1, sort_keys=True), encoding="utf-8")
    violations = kernels.check_expectations(attribution, arm.get("expect_kernels") or {})
    return {"attribution": attribution, "violations": violations}


def _crosscheck(cfg: dict, base_url: str, tokenizer_dir: Path | None, out_dir: Path) -> list[dict]:
    """vLLM's own benchmark and our client, back to back on this arm's server, at the config's crosscheck points:
    the same server and the same moment, so a difference between the tools is the tools'."""
    from attnbench.measure.crosscheck import crosscheck

    xc = cfg["crosscheck"]
    results = []
    for point in xc["points"]:
        workload = cfg["workloads"][point["workload"]]
        tag = f"{point['workload']}-c{point['concurrency']}"
        args = argparse.Namespace(
            base_url=base_url,
            model=cfg["model"]["name"],
            tokenizer=str(tokenizer_dir or cfg["model"]["path"]),
            engine_python=engine_python(cfg),
            input_len=workload["prompt_tokens"],
            output_len=workload["output_tokens"],
            concurrency=point["concurrency"],
            num_prompts=point.get("num_prompts") or max(2 * point["concurrency"], 4),
            warmup=xc["warmup"] if point.get("warmup") is None else point["warmup"],
            repeats=xc["repeats"],
            api=cfg["sweep"]["api"],
            api_key_env=cfg["sweep"].get("api_key_env"),
            seed=xc["seed"],
            temperature=cfg["sweep"]["temperature"],
            timeout=cfg["sweep"]["request_timeout_s"],
            output=str(out_dir / "crosscheck" / tag),
        )
        result = crosscheck(args)
        results.append(
            {
                "point": tag,
                **result["comparison"],
                "workload": result["workload"],
                "repeats": args.repeats,
                "prompt_tokens": {t: result[t][0]["prompt_tokens_median"] for t in ("vllm", "ours")},
            }
        )
    return results


def run_arm(cfg: dict, arm_name: str, repeat: int, out_dir: Path, exp_dir: Path | None = None) -> dict:
    """Run one (arm, repeat) into out_dir and return the run.json content; raises AttnbenchError on failure
    after writing run.json with status failed."""
    from attnbench.measure.openloop import rate_workloads, run_open_loop
    from attnbench.measure.sweep import run_sweep

    arm = arm_by_name(cfg, arm_name)
    exp_dir = Path(exp_dir) if exp_dir else Path("results") / cfg["experiment"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("records.jsonl", "levels.jsonl"):
        (out_dir / name).touch()
    (out_dir / "gpu.jsonl").unlink(missing_ok=True)  # samples of an earlier attempt are not this run's
    for name in ("servermetrics.jsonl", "openloop.jsonl", "openloop_levels.jsonl"):  # undeclared outputs: same reason
        (out_dir / name).unlink(missing_ok=True)
    engine = cfg["engine"]
    api_key_env = cfg["sweep"].get("api_key_env")
    api_key = os.environ.get(api_key_env) if api_key_env else None
    secrets = provenance.secret_values(extra=[api_key])
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ids = {"experiment": cfg["experiment"], "arm": arm_name, "repeat": repeat}

    run: dict = {
        "schema": 1,
        **ids,
        "status": "failed",
        "error": None,
        "started": _now(),
        "finished": None,
        "base_url": None,
        "engine": {
            "runtime": engine["runtime"],
            "version": engine["version"],
            "image": engine.get("image"),
            "digest": None,
            "lock": None,
            "versions": {},
        },
        "server": {},
        "backend": None,
        "kernels": None,
        "host": provenance.host_info(cfg),
        "git": provenance.git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "config": provenance.redact(cfg, secrets),
    }
    if engine["runtime"] == "venv":
        lock = exp_dir / "engine" / engine_id(cfg) / "engine-lock.txt"  # written by rule engine_venv
        run["engine"]["lock"] = str(lock) if lock.exists() else None

    def on_sigterm(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    server = None
    try:
        if api_key_env and not api_key:
            raise AttnbenchError(f"sweep.api_key_env: environment variable {api_key_env} is not set")
        model_dir, tokenizer_dir = model_paths(cfg, exp_dir)
        port = free_port(engine["host"])
        base_url = f"http://{engine['host']}:{port}"
        run["base_url"] = base_url
        trace_dir = (out_dir / "trace").resolve() if cfg["kernels"]["probe"] else None
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)  # a container binds it in: it must exist first
        spec = launch_spec(
            cfg,
            arm,
            model_dir=model_dir,
            tokenizer_dir=tokenizer_dir,
            host=engine["host"],
            port=port,
            trace_dir=trace_dir,
        )
        if api_key:
            spec.env["VLLM_API_KEY"] = api_key  # vLLM reads it; never on the command line
        run["server"] = {"argv": provenance.redact(spec.argv, secrets), "env": provenance.redact(spec.env, secrets)}
        run["engine"]["image"] = spec.description.get("image", run["engine"]["image"])
        if engine["runtime"] in ("docker", "apptainer"):  # digest, pinned, image ID, versions inside: from the build
            run["engine"].update(image_provenance(cfg, arm, results_dir=exp_dir))
        run["engine"]["layers"] = _layer_digests(spec.env)
        versions_argv = _versions_argv(cfg, spec)
        if versions_argv:
            run["engine"]["versions"] = provenance.engine_versions(versions_argv, spec.env)

        client_cpus = cfg["sweep"].get("client_cpus")
        check_cpus("engine.cpus", spec.cpus)
        check_cpus("sweep.client_cpus", client_cpus)
        server = _make_server(spec, out_dir / "server.log", base_url, engine["startup_timeout_s"])
        with server:
            server.start()
            run["server"]["pid"] = getattr(server, "pid", None)
            if server.priority:  # engine.nice / engine.cpus: the argv above ran under `taskset` / `nice`
                run["server"]["priority"] = server.priority
            if client_cpus:
                # After the start, so the server does not inherit it. This thread (the sweep's event loop) and the
                # threads and client processes it starts from now on stay on these CPUs.
                os.sched_setaffinity(0, client_cpus)
                run["client"] = {"cpus": sorted(client_cpus)}
            run["server"]["ready_s"] = round(server.wait_ready(), 2)
            with httpx.Client(headers=headers) as client:
                run["server"]["version_endpoint"] = _get_json(client, f"{base_url}/version")
                run["server"]["models_endpoint"] = _get_json(client, f"{base_url}/v1/models")

            log_text = (out_dir / "server.log").read_text(encoding="utf-8", errors="replace")
            run["backend"] = check_backend(arm, parse_backend(log_text), engine["device"])
            run["quantization"] = check_quantization(cfg["model"], parse_quantization(log_text))
            if not run["quantization"]["match"]:
                raise ServerError(
                    f"model quantization: expected {run['quantization']['expected']} but the server log names "
                    f"{run['quantization']['logged'] or 'none'}"
                )
            if not run["backend"]["match"] and not arm.get("allow_backend_mismatch"):
                raise ServerError(
                    f"arm {arm_name} asked for backend {run['backend']['expected']} but the server log names "
                    f"{run['backend']['logged'] or 'no backend'}"
                    + (f" and refused {', '.join(run['backend']['refused'])}" if run["backend"]["refused"] else "")
                    + " (set allow_backend_mismatch: true on the arm to record the mismatch and go on)"
                )

            def abort_check() -> str | None:
                if server.alive():
                    return None
                return f"server died ({server.exit_reason() or 'no reason known'})"

            # Clocks, power and temperature from the first measured request to the last crosscheck (gpu.jsonl);
            # the server's /metrics at each level's start and end and every interval_s (servermetrics.jsonl).
            metrics_cfg = cfg.get("server_metrics") or {}
            with (
                GpuMonitor(out_dir / "gpu.jsonl"),
                Scraper(
                    base_url,
                    out_dir / "servermetrics.jsonl",
                    headers=headers,
                    enabled=metrics_cfg.get("scrape", True),
                    interval_s=metrics_cfg.get("interval_s", DEFAULT_SCRAPE_S),
                ) as scraper,
            ):
                asyncio.run(
                    run_sweep(
                        base_url,
                        cfg["model"]["name"],
                        workloads_of(cfg),
                        cfg["sweep"],
                        out_dir,
                        api_key=api_key,
                        abort_check=abort_check,
                        on_level=scraper.mark,
                        **ids,
                    )
                )
                if rate_workloads(cfg):  # open-loop rates, on the same server after the closed loop (openloop.py)
                    asyncio.run(
                        run_open_loop(
                            base_url,
                            cfg["model"]["name"],
                            rate_workloads(cfg),
                            cfg["sweep"],
                            cfg.get("open_loop"),
                            out_dir,
                            api_key=api_key,
                            abort_check=abort_check,
                            on_level=scraper.mark,
                            **ids,
                        )
                    )
                if not server.alive():
                    raise ServerError(f"server died during the sweep ({server.exit_reason() or 'no reason known'})")
                # The profiler probe runs after the sweep: the sweep wants a fresh run folder, and a trace must not
                # slow down measured requests.
                if cfg["kernels"]["probe"]:
                    probe = _kernel_probe(cfg, arm, base_url, cfg["model"]["name"], out_dir, headers, ids, api_key)
                    run["kernels"] = {
                        "violations": probe["violations"],
                        "families": {k: v.get("share") for k, v in probe["attribution"].get("families", {}).items()},
                    }
                    if probe["violations"]:
                        raise AttnbenchError(
                            f"arm {arm_name}: kernel expectations failed: {'; '.join(probe['violations'])}"
                        )

                if cfg["crosscheck"]["points"] and repeat in cfg["crosscheck"]["runs"]:
                    run["crosscheck"] = _crosscheck(cfg, base_url, tokenizer_dir, out_dir)

            run["server"]["exit_code"] = server.stop(engine["stop_grace_s"])
        run["status"] = "ok"
        return run
    except (AttnbenchError, Terminated, KeyboardInterrupt, SystemExit, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted (Ctrl-C)"
        elif isinstance(exc, SystemExit):  # server.Server turns SIGTERM into SystemExit while the server runs
            reason = f"terminated (exit status {exc.code})"
        if server is not None and "exit_code" not in run["server"]:
            reason_server = server.exit_reason() if hasattr(server, "exit_reason") else None
            if reason_server and reason_server not in reason:
                # e.g. the sweep saw "server unreachable": say why it was (killed, exit code...)
                reason += f"; {reason_server}"
        run["error"] = provenance.redact_text(reason, secrets)
        if isinstance(exc, AttnbenchError) and run["error"] != str(exc):
            raise AttnbenchError(run["error"]) from exc  # the CLI prints the whole (redacted) cause
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        run["finished"] = _now()
        run["gpu"] = gpu_summary(out_dir / "gpu.jsonl")
        run["server_metrics"] = servermetrics_summary(out_dir)
        provenance.redact_file(out_dir / "server.log", secrets)
        (out_dir / "server.log").touch()
        (out_dir / "run.json").write_text(json.dumps(run, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if run["status"] != "ok":
            keep_failed(out_dir, exp_dir, arm_name, repeat)


def keep_failed(out_dir: Path, exp_dir: Path, arm: str, repeat: int) -> Path:
    """Copy a failed run folder where Snakemake will not delete it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = exp_dir / "failed" / f"{arm}-rep{repeat}-{stamp}"
    dest.mkdir(parents=True, exist_ok=True)
    for item in out_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    return dest


def _cmd_run_arm(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    exp_dir = Path(args.exp_dir) if args.exp_dir else Path("results") / cfg["experiment"]
    kept = f"raw records kept in {exp_dir / 'failed'}"
    try:
        run = run_arm(cfg, args.arm, args.repeat, Path(args.out), exp_dir)
    except AttnbenchError as exc:
        raise AttnbenchError(f"{exc} ({kept})") from None
    except (Terminated, SystemExit):
        raise AttnbenchError(f"terminated by SIGTERM, server stopped ({kept})") from None
    except KeyboardInterrupt:
        raise AttnbenchError(f"interrupted, server stopped ({kept})") from None
    print(
        f"run-arm {args.arm} rep{args.repeat}: ok, server ready in {run['server'].get('ready_s')} s, "
        f"backend logged {run['backend']['logged'] if run['backend'] else None}"
    )
    return 0


def register(subparsers) -> None:
    text = "start the server for one arm, sweep every workload, stop it"
    p = subparsers.add_parser("run-arm", help=text, description=text)
    p.add_argument("--config", required=True, help="experiment config YAML")
    p.add_argument("--arm", required=True, help="arm name")
    p.add_argument("--repeat", type=int, default=0, help="repeat index (0-based)")
    p.add_argument("--out", required=True, help="run folder (results/<exp>/runs/<arm>/rep<k>)")
    p.add_argument("--exp-dir", default=None, help="experiment folder (default: results/<experiment>)")
    p.set_defaults(func=_cmd_run_arm)
