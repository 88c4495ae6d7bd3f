"""``crossdiff train-crosscoder``: train a crosscoder on an activation store, then evaluate it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossdiff.cli.options import parse_assignments
from crossdiff.crosscoder.stage import CrosscoderStageConfig


def _flag(value: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) as a bool."""
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered in ("true", "1", "yes")


def _site_list(value: str) -> tuple[str, ...]:
    """Comma-separated site names as a tuple."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


STAGE_OPTIONS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("expansion", int, "latents per largest d_model"),
    ("dict_size", int, "latents (overrides --expansion)"),
    ("k", float, "active latents per token (default: 3/16 of the widest d_model)"),
    ("n_shared", int, "designated shared latents (default: dict size / 16, 0 if widths differ)"),
    ("n_dedicated", int, "dedicated latents per model (decoder into the others is zero)"),
    ("dedicated_encoder_own", _flag, "true: dedicated latents read their own model only"),
    ("sites", _site_list, "comma-separated sites of every model, in one crosscoder"),
    ("steps", int, "optimiser steps"),
    ("batch_size", int, "tokens per step"),
    ("lr", float, "peak learning rate"),
    ("dead_tokens", int, "a latent is dead after this many tokens without firing"),
    ("aux_coeff", float, "weight of the aux-k loss"),
    ("k_start", float, "anneal k from this value"),
    ("k_anneal_steps", int, "steps of the k annealing"),
    ("sparsity_coeff", float, "λ of the decoder-norm sparsity term (0: off)"),
    ("shared_sparsity_ratio", float, "that term's weight on the designated shared latents"),
    ("checkpoint_every", int, "steps between checkpoints"),
    ("eval_shards", int, "last shards held out"),
    ("ce_sequences", int, "held-out sequences for CE recovered"),
    ("seed", int, "seed of the initialisation and batch order"),
    ("device", str, "auto, cpu, cuda or cuda:N"),
    ("dtype", str, "weight dtype: float32 or bfloat16"),
    ("latent_shards", int, "under torchrun: processes the dictionary is split over"),
)
"""``CrosscoderStageConfig`` fields offered as ``--flags`` (defaults come from the dataclass)."""


def _help(name: str, text: str) -> str:
    default = CrosscoderStageConfig.__dataclass_fields__[name].default
    if default is None or default == ():
        return text
    if isinstance(default, (str, bool)):
        return f"{text} (default: {str(default).lower() if isinstance(default, bool) else default})"
    return f"{text} (default: {format(default, 'g')})"


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
    cmd.add_argument(
        "--config", type=Path, help="TOML file of crosscoder settings; flags given override it"
    )
    for name, kind, text in STAGE_OPTIONS:
        cmd.add_argument(f"--{name.replace('_', '-')}", type=kind, help=_help(name, text))
    cmd.add_argument(
        "--overwrite", action="store_true", help="retrain over work made with other settings"
    )
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmd.add_argument(
        "--track", choices=("none", "wandb"), default="none",
        help="send loss, FVE, L0, dead fraction and throughput to W&B (default: none)",
    )  # fmt: skip
    cmd.add_argument("--track-project", default="crossdiff", help="the W&B project")
    cmd.add_argument(
        "--track-mode", choices=("offline", "online"), default="offline",
        help="offline (default) writes OUT/wandb with no network; `wandb sync` uploads it",
    )  # fmt: skip
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume), evaluate on the held-out shards, and write OUT/metrics.json."""
    from crossdiff.config import from_dict, load_toml
    from crossdiff.crosscoder.stage import train_crosscoder_stage
    from crossdiff.tracking import TrackingConfig

    settings = load_toml(args.config) if args.config else {}
    given = {name: getattr(args, name) for name, _, _ in STAGE_OPTIONS}
    settings.update({name: value for name, value in given.items() if value is not None})
    if args.no_progress:
        settings["progress"] = False
    config = from_dict(CrosscoderStageConfig, settings, "crosscoder")
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    metrics = train_crosscoder_stage(
        args.acts,
        args.out,
        config,
        models=models,
        sites=parse_assignments(args.site, "--site", "MODEL=SITE"),
        overwrite=args.overwrite,
        tracking=TrackingConfig(args.track, args.track_project, args.track_mode),
    )
    if metrics:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
