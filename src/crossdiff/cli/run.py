"""``crossdiff run``: the whole pipeline from one config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossdiff.pipeline.run import STAGES


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``run``."""
    cmd = commands.add_parser(
        "run",
        help="run corpus -> models -> harvest -> crosscoder -> analyses -> report",
        description="Run every stage of a run config (TOML; see examples/quickstart.toml) into "
        "OUT. Finished stages are skipped, interrupted ones resume; OUT/report/summary.json "
        "and OUT/report/report.html hold the results.",
    )
    cmd.add_argument("config", type=Path, help="run config (TOML)")
    cmd.add_argument("--out", required=True, type=Path, help="run directory")
    cmd.add_argument(
        "--overwrite",
        action="store_true",
        help="redo stages whose output was made with other settings (default: refuse)",
    )
    cmd.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a setting of the config, e.g. --set crosscoder.steps=100 (repeat); "
        "VALUE is a TOML value, or a plain string",
    )  # fmt: skip
    cmd.add_argument(
        "--repair",
        action="store_true",
        help="harvest again the shards whose bytes no longer match their checksums (default: "
        "a named error)",
    )
    cmd.add_argument("--no-progress", action="store_true", help="no progress bars or step logs")
    cmd.add_argument(
        "--until", choices=STAGES, metavar="STAGE",
        help=f"stop after this stage ({', '.join(STAGES)}); a later run goes on from there",
    )  # fmt: skip
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print where the report is."""
    from crossdiff.pipeline import load_run_config, run_pipeline

    config = load_run_config(args.config, args.overrides)
    run_pipeline(
        config, args.out, overwrite=args.overwrite, progress=not args.no_progress,
        until=args.until, repair=args.repair,
    )  # fmt: skip
    if args.until and args.until != "report":
        print(f"stopped after the {args.until} stage: {args.out}")
        return 0
    print(f"summary: {args.out / 'report' / 'summary.json'}")
    print(f"report:  {args.out / 'report' / 'report.html'}")
    return 0
