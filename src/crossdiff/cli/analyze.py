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
    parser.add_argument("name", nargs="?", help="the analysis name")
    parser.add_argument("--run", type=Path, help="run directory (stage subdirs)")
    parser.add_argument(
        "--list", action="store_true", help="list the available analyses and what they need"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the analysis and print its summary (or, with ``--list``, list the analyses)."""
    from crossdiff.analysis import available_analyses, run_analysis
    from crossdiff.errors import ConfigError
    from crossdiff.plugins import create_plugin_manager

    manager = create_plugin_manager()
    if args.list:
        for name, analysis in sorted(available_analyses(manager).items()):
            needs = ", ".join(analysis.needs) or "-"
            print(f"{name:<20} {analysis.description} (needs: {needs})")
        return 0
    if args.name is None or args.run is None:
        raise ConfigError("give an analysis NAME and --run RUN (or --list to see the analyses)")
    result, target = run_analysis(args.name, args.run, manager)
    print(json.dumps(result.summary, indent=2, sort_keys=True))
    print(f"wrote {target}")
    return 0
