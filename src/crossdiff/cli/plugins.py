"""``crossdiff plugins``: every plugin, its kind, what it provides and where it came from."""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``plugins`` command."""
    parser = commands.add_parser(
        "plugins",
        help="list plugins: kind, what each provides, origin",
        description="List every plugin (built-in and installed), what it provides, and where "
        "it came from. Plugins that failed to load are listed with their error.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the plugin table; exit status 1 if any plugin failed to load."""
    from crossdiff.plugins import create_plugin_manager, describe_plugins

    rows = describe_plugins(create_plugin_manager())
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        return 1 if any(row.error for row in rows) else 0
    for row in rows:
        print(f"{row.name}  [{row.origin}]")
        print(f"    module: {row.module_path}")
        for kind, names in row.provides.items():
            print(f"    {kind}: {', '.join(names) if names else '(none)'}")
        if row.error:
            print(f"    ERROR: {row.error}")
    return 1 if any(row.error for row in rows) else 0
