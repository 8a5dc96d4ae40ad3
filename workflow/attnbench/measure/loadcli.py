"""The command-line side the load commands share (`attnbench sweep`, `attnbench open-loop`): their common options,
the settings those options give over the config's (or the schema's) and the summary each prints from the run
folder's files. The library functions (sweep.run_sweep, openloop.run_open_loop) take typed settings, never the
parsed arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from attnbench.config.experiment import Experiment, SweepSettings, Workload
from attnbench.errors import AttnbenchError, SweepError

T = TypeVar("T")


def add_load_parser(
    subparsers, name: str, summary: str, description: str, *, files: str, config_help: str
) -> argparse.ArgumentParser:
    """A load command's parser with the common options; `files`: what its run folder gets."""
    p = subparsers.add_parser(name, help=summary, description=description)
    add_common_args(p, output_help=f"run folder: {files} are written here", config_help=config_help)
    return p


def add_common_args(p: argparse.ArgumentParser, *, output_help: str, config_help: str) -> None:
    """The options every load command shares: the server, the request shape, the record ids, the run folder."""
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument(
        "--workload",
        action="append",
        help="NAME=PROMPT_TOKENS:OUTPUT_TOKENS (e.g. short=45:512) or a workload name of --config; repeatable",
    )
    p.add_argument("--warmup", type=int, help="warmup requests per level, recorded but excluded (default 2)")
    p.add_argument("--api", choices=["chat", "completions"], help="endpoint (default chat)")
    p.add_argument("--api-key-env", help="name of the environment variable holding the API key (never the key)")
    p.add_argument("--seed", type=int, help="prompt seed (default 0)")
    p.add_argument("--timeout", type=float, help="per-request time limit in seconds (default 600)")
    p.add_argument("--no-system-prompt", action="store_true", help="send no system message")
    p.add_argument("--experiment", default="adhoc", help="experiment id written into records")
    p.add_argument("--arm", default="default", help="arm id written into records")
    p.add_argument("--repeat", type=int, default=0, help="repeat index written into records")
    p.add_argument("--summary-json", help="also write the summary table as JSON records to this file")
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--config", help=config_help)


def parse_workload(text: str, known: dict[str, Workload]) -> Workload:
    """'short=45:512' defines a workload; 'short' names one of the config's."""
    if "=" in text:
        name, _, spec = text.partition("=")
        try:
            prompt, output = (int(x) for x in spec.split(":"))
        except ValueError:
            raise SweepError(
                f"--workload {text!r}: expected NAME=PROMPT_TOKENS:OUTPUT_TOKENS, e.g. short=45:512"
            ) from None
        if prompt < 1 or output < 1:
            raise SweepError(f"--workload {text!r}: token counts must be positive")
        return Workload(name, prompt, output, ())
    if text in known:
        return known[text]
    raise SweepError(
        f"--workload {text!r}: not NAME=PROMPT:OUTPUT and not a workload of the config "
        f"(known: {sorted(known) or 'none'})"
    )


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--concurrency {text!r}: expected a comma-separated list of integers, e.g. 1,2,4") from None
    if not levels or any(n < 1 for n in levels):
        raise SweepError(f"--concurrency {text!r}: levels must be integers >= 1")
    return levels


def cli_experiment(args: argparse.Namespace) -> Experiment | None:
    """The experiment --config names (None without one)."""
    if not args.config:
        return None
    from attnbench.config import load_experiment

    return load_experiment(args.config)


def api_key_from_env(variable: str | None, error: type[AttnbenchError] = SweepError) -> str | None:
    """The API key the named environment variable holds (None when no variable is named)."""
    if not variable:
        return None
    api_key = os.environ.get(variable)
    if not api_key:
        raise error(f"environment variable {variable} (--api-key-env) is not set or empty")
    return api_key


def settings_from_cli(
    args: argparse.Namespace, exp: Experiment | None, overrides: Mapping[str, Any]
) -> tuple[SweepSettings, str | None]:
    """The sweep settings: the config's (the schema's without one, measured by count), then add_common_args'
    options and the command's own `overrides` where given; and the API key they name."""
    given = dict(vars(exp.sweep)) if exp else {}
    common = {
        "api": args.api,
        "warmup_requests": args.warmup,
        "seed": args.seed,
        "request_timeout_s": args.timeout,
        "api_key_env": args.api_key_env,
    }
    given.update({k: v for k, v in {**common, **overrides}.items() if v is not None})
    if args.no_system_prompt:
        given["system_prompt"] = None
    settings = SweepSettings.for_caller(given)
    return settings, api_key_from_env(settings.api_key_env)


def run_keeping_error(coro: Coroutine[Any, Any, T]) -> tuple[T | None, SweepError | None]:
    """Run a load; a SweepError is returned, not raised, so the command still prints what was kept first."""
    try:
        return asyncio.run(coro), None
    except SweepError as exc:
        return None, exc


def write_summary_json(table: pd.DataFrame, path: str | None) -> None:
    # json (not pandas' writer) keeps every float exactly, so the summary can be compared with a recomputation.
    if path:
        Path(path).write_text(json.dumps(table.to_dict(orient="records")) + "\n", encoding="utf-8")
