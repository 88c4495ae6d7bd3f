"""``crossdiff train-model``: train the in-repo dense or MoE model on a corpus."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``train-model``."""
    cmd = commands.add_parser(
        "train-model",
        help="train the in-repo 5-layer dense or MoE model (resumable, torchrun-ready)",
        description="Train a dense or Mixture-of-Experts TransformerLens model with equal active "
        "parameters on a built corpus. Writes cfg.json + model.safetensors, the tokenizer, a "
        "resumable checkpoint and manifest.json into --out. Under `torchrun --nproc_per_node N "
        "--no-python crossdiff train-model ...` it trains data-parallel (gloo on CPU, nccl "
        "on GPU).",
    )
    cmd.add_argument("--arch", required=True, choices=("dense", "moe"), help="model kind")
    cmd.add_argument("--preset", default="tiny", choices=("tiny", "paper"), help="size preset")
    cmd.add_argument("--corpus", required=True, type=Path, help="a corpus stage directory")
    cmd.add_argument("--out", required=True, type=Path, help="output directory")
    cmd.add_argument(
        "--config",
        type=Path,
        help="TOML file with [model] and [train] tables overriding the preset",
    )
    cmd.add_argument("--tokens", type=int, help="override train.tokens")
    cmd.add_argument("--seed", type=int, help="override both model.seed and train.seed")
    cmd.add_argument(
        "--overwrite", action="store_true", help="retrain a model made with other settings"
    )
    cmd.add_argument("--no-progress", action="store_true", help="no step logs")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, then print the manifest's headline numbers."""
    from crossdiff.config import load_toml
    from crossdiff.errors import ConfigError
    from crossdiff.models.stage import train_model_stage

    settings = load_toml(args.config) if args.config else {}
    unknown = set(settings) - {"model", "train"}
    if unknown:
        raise ConfigError(
            f"--config {str(args.config)!r}: unknown tables {sorted(unknown)}; "
            "expected [model] and [train]"
        )
    model, train = dict(settings.get("model", {})), dict(settings.get("train", {}))
    if args.tokens is not None:
        train["tokens"] = args.tokens
    if args.seed is not None:
        model["seed"] = train["seed"] = args.seed
    manifest = train_model_stage(
        args.corpus, args.out, args.arch, args.preset, model, train,
        overwrite=args.overwrite, progress=not args.no_progress,
    )  # fmt: skip
    if manifest:
        print(format_summary(manifest))
    return 0


def format_summary(manifest: dict) -> str:
    """Parameters, tokens, time, and per-domain validation loss against the unigram baseline."""
    lines = [
        f"{manifest['arch']}: active params {manifest['active_params']:,} "
        f"(total {manifest['total_params']:,}; {manifest['partner_params']['arch']} partner "
        f"active {manifest['partner_params']['active']:,}, ratio "
        f"{manifest['active_params_ratio_to_partner']:.4f})",
        f"tokens seen {manifest['tokens_seen']:,} in {manifest['train_seconds']} s of training "
        f"({manifest.get('wall_seconds', '?')} s in all)",
        f"{'domain':<10} {'val loss':>9} {'unigram H':>10} {'below':>7}",
    ]
    for domain, loss in manifest["val_loss"].items():
        entropy = manifest["unigram_entropy"][domain]
        lines.append(f"{domain:<10} {loss:>9.3f} {entropy:>10.3f} {entropy - loss:>7.3f}")
    if "expert_usage_min_share" in manifest:
        lines.append(
            f"smallest expert share {manifest['expert_usage_min_share']:.4f} "
            f"(floor 1/(4E) = {manifest['expert_usage_floor']:.4f})"
        )
    return "\n".join(lines)
