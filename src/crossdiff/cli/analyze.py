"""``crossdiff analyze``: run one analysis plugin on a run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``analyze`` command."""
    parser = commands.add_parser(
        "analyze",
        help="run one analysis plugin on a run directory",
        description="Run an analysis (see `crossdiff plugins`) on a run directory whose stage "
        "outputs it needs; writes RUN/analyses/NAME/summary.json and its figures.",
    )
    parser.add_argument("name", help="the analysis name")
    parser.add_argument("--run", required=True, type=Path, help="run directory (stage subdirs)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the analysis and print its summary."""
    from crossdiff.analysis import run_analysis
    from crossdiff.plugins import create_plugin_manager

    result, target = run_analysis(args.name, args.run, create_plugin_manager())
    print(json.dumps(result.summary, indent=2, sort_keys=True))
    print(f"wrote {target}")
    return 0
