"""``crossdiff toy``: sweeps of toy models of superposition, dense and MoE."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``toy run``."""
    group = commands.add_parser(
        "toy",
        help="toy models of superposition with MoE layers",
        description="Train sweeps of toy autoencoders (dense and MoE) and report their "
        "superposition; see docs/toy.md.",
    )
    actions = group.add_subparsers(title="actions", metavar="ACTION")
    cmd = actions.add_parser(
        "run",
        help="train every sweep of a toy config and write the report",
        description="Train every sweep of CONFIG (TOML; see examples/toy_superposition.toml) "
        "into OUT/sweeps/NAME; finished sweeps are skipped. OUT/report/summary.json and "
        "OUT/report/report.html hold the results.",
    )
    cmd.add_argument("config", type=Path, help="toy config (TOML)")
    cmd.add_argument("--out", required=True, type=Path, help="output directory")
    cmd.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    cmd.set_defaults(handler=run)
    group.set_defaults(handler=lambda args: group.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    """Run the sweeps and print where the report is."""
    from crossdiff.toy.config import load_toy_config
    from crossdiff.toy.stage import run_toy

    config = load_toy_config(args.config)
    summary = run_toy(config, args.out, args.device)
    print(f"{summary['models']} toy models")
    print(f"summary: {args.out / 'report' / 'summary.json'}")
    print(f"report:  {args.out / 'report' / 'report.html'}")
    return 0
