"""``crossdiff train-crosscoder``: train a crosscoder on an activation store, then evaluate it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crossdiff.cli.options import parse_assignments


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``train-crosscoder``."""
    cmd = commands.add_parser(
        "train-crosscoder",
        help="train a BatchTopK crosscoder on a store and write metrics.json",
        description="Train a crosscoder on the store's shards except the last --eval-shards, "
        "which are held out for FVE, L0, dead fraction and CE recovered (OUT/metrics.json). "
        "Rerun the same command to resume; under torchrun it trains data-parallel.",
    )
    cmd.add_argument("--acts", required=True, type=Path, help="activation store directory")
    cmd.add_argument("--out", required=True, type=Path, help="output directory")
    cmd.add_argument("--models", help="comma-separated models, in order (default: all)")
    cmd.add_argument(
        "--site", action="append", default=[], metavar="MODEL=SITE",
        help="the site of a model with several in the store (repeat)",
    )  # fmt: skip
    cmd.add_argument("--expansion", type=int, default=16, help="latents per largest d_model")
    cmd.add_argument("--dict-size", type=int, help="latents (overrides --expansion)")
    cmd.add_argument("--k", type=float, help="active latents per token (default d_model/8)")
    cmd.add_argument("--n-shared", type=int, default=0, help="designated shared latents")
    cmd.add_argument("--steps", type=int, default=2000)
    cmd.add_argument("--batch-size", type=int, default=1024)
    cmd.add_argument("--lr", type=float, default=1e-3)
    cmd.add_argument("--dead-tokens", type=int, default=1_000_000)
    cmd.add_argument("--checkpoint-every", type=int, default=500)
    cmd.add_argument("--eval-shards", type=int, default=1, help="last shards held out")
    cmd.add_argument("--ce-sequences", type=int, default=32, help="held-out sequences for CE")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume), evaluate on the held-out shards, and write OUT/metrics.json."""
    from crossdiff.crosscoder.stage import CrosscoderStageConfig, train_crosscoder_stage

    config = CrosscoderStageConfig(
        expansion=args.expansion,
        dict_size=args.dict_size,
        k=args.k,
        n_shared=args.n_shared,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        dead_tokens=args.dead_tokens,
        checkpoint_every=args.checkpoint_every,
        eval_shards=args.eval_shards,
        ce_sequences=args.ce_sequences,
        seed=args.seed,
        progress=not args.no_progress,
    )
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    metrics = train_crosscoder_stage(
        args.acts,
        args.out,
        config,
        models=models,
        sites=parse_assignments(args.site, "--site", "MODEL=SITE"),
    )
    if metrics:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
