"""The ``crossdiff`` command line: one module per command group, each importing lazily."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crossdiff import __version__
from crossdiff.cli import (
    analyze,
    corpus,
    harvest,
    plugins,
    run,
    toy,
    train_crosscoder,
    train_model,
)
from crossdiff.errors import CrossdiffError
from crossdiff.runtime import retain_freed_memory

COMMAND_GROUPS = (plugins, corpus, train_model, harvest, train_crosscoder, analyze, run, toy)
"""Modules with ``add_parser(commands)``; a new command is a new module listed here."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crossdiff`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        retain_freed_memory()
        return args.handler(args) or 0
    except CrossdiffError as error:
        print(f"crossdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crossdiff: interrupted; finished steps are kept, rerun to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="crossdiff",
        description="Crosscoders and MoE analyses for diffing Mixture-of-Experts and dense models.",
    )
    parser.add_argument("--version", action="version", version=f"crossdiff {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parser(commands)
    return parser
