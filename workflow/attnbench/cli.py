"""The `attnbench` command line. Each subcommand lives in the module that does the work; this file only wires
them: a module exposes `register(subparsers)`, which adds its parser and sets `func` to a callable taking the
parsed namespace and returning an exit status."""

from __future__ import annotations

import argparse
import importlib
import sys

from attnbench.errors import AttnbenchError

# Modules that contribute subcommands, in the order `attnbench --help` lists them.
COMMAND_MODULES = [
    "measure.sweep",
    "measure.crosscheck",
    "engines.models",
    "engines.engine",
    "measure.openloop",
    "engines.runarm",
    "engines.gpu",
    "engines.containers",
    "engines.kernels",
    "analysis.aggregate",
    "analysis.plots",
    "analysis.report",
    "bundles.bundle",
    "analysis.compare",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnbench",
        description="Reproducible vLLM attention-backend benchmarks: engines, load, tables, plots, reports and "
        "verifiable result bundles. The Snakemake workflow calls these commands; `attnbench COMMAND --help` for each.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"attnbench.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AttnbenchError as exc:
        print(f"attnbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnbench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
