"""``crossdiff train-crosscoder``: train a crosscoder on an activation store, then evaluate it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crossdiff.errors import ConfigError


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
    from crossdiff.config import to_dict
    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
    from crossdiff.crosscoder.distributed import Collectives, finish_distributed, init_distributed
    from crossdiff.crosscoder.evaluate import evaluate
    from crossdiff.crosscoder.train import train
    from crossdiff.stages import atomic_write_json, is_complete, write_manifest
    from crossdiff.store import StoreReader, open_store

    info = open_store(args.acts)
    models, sites = choose_sites(info.sites, args.models, args.site)
    dims = tuple(info.dims[m][sites[m]] for m in models)
    n_shards = len(info.shard_paths())
    if not 1 <= args.eval_shards < n_shards:
        raise ConfigError(f"--eval-shards must be in [1, {n_shards - 1}] for {n_shards} shards")
    train_shards = list(range(n_shards - args.eval_shards))
    eval_shards = list(range(n_shards - args.eval_shards, n_shards))
    cfg = CrosscoderConfig(
        models=models,
        d_models=dims,
        dict_size=args.dict_size or args.expansion * max(dims),
        k=args.k or max(dims) / 8,
        n_shared=args.n_shared,
        seed=args.seed,
    )
    tcfg = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        warmup_steps=min(100, args.steps // 10),
        dead_tokens=args.dead_tokens,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    record = {
        "crosscoder": to_dict(cfg),
        "train": to_dict(tcfg),
        "store": str(Path(args.acts).resolve()),
        "sites": sites,
        "batch_size": args.batch_size,
        "eval_shards": eval_shards,
    }
    out = Path(args.out)
    if is_complete(out, record):
        print(f"{out} is complete with this configuration; metrics in {out / 'metrics.json'}")
        return 0
    init_distributed()
    reader = StoreReader(
        info, args.batch_size, sites=sites, seed=args.seed, normalize=False,
        shards=train_shards, drop_last=True, passes=None,
    )  # fmt: skip
    one_pass = StoreReader(info, args.batch_size, sites=sites, shards=train_shards, drop_last=True)
    if len(one_pass) == 0:
        raise ConfigError(
            f"the training shards hold fewer tokens than one batch of {args.batch_size}: "
            "lower --batch-size or --eval-shards"
        )
    model = Crosscoder(cfg)
    result = train(model, reader, tcfg, out)
    rank = Collectives().rank
    finish_distributed()
    if rank != 0:
        return 0
    model.save_pretrained(out / "crosscoder")
    held_out = StoreReader(info, 4096, sites=sites, normalize=False, shards=eval_shards)
    metrics: dict[str, Any] = evaluate(model, held_out).to_dict()
    metrics["eval_window_tokens"] = metrics.pop("n_tokens")
    metrics["train_steps"], metrics["nan_batches"] = result.steps, result.nan_batches
    metrics["ce_recovered"] = ce_metrics(model, info, sites, eval_shards, args.ce_sequences)
    atomic_write_json(out / "metrics.json", metrics)
    write_manifest(out, "crosscoder", record, complete=True)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def choose_sites(
    available: dict[str, list[str]], models_arg: str | None, site_args: list[str]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The models (in order) and one site for each, checked against the store."""
    from crossdiff.errors import unknown_choice

    models = tuple(m.strip() for m in models_arg.split(",")) if models_arg else tuple(available)
    for m in models:
        if m not in available:
            raise unknown_choice("model (not in the store)", m, available)
    chosen: dict[str, str] = {}
    for spec in site_args:
        model, sep, site = spec.partition("=")
        if not sep or model not in models:
            raise ConfigError(f"--site {spec!r} must be MODEL=SITE with MODEL among {models}")
        if site not in available[model]:
            raise unknown_choice(f"site of {model!r}", site, available[model])
        chosen[model] = site
    for m in models:
        if m not in chosen:
            if len(available[m]) != 1:
                raise ConfigError(
                    f"model {m!r} has several sites in the store {available[m]}: "
                    f"choose one with --site {m}=SITE"
                )
            chosen[m] = available[m][0]
    return models, chosen


def ce_metrics(
    model: Any, info: Any, sites: dict[str, str], eval_shards: list[int], n_sequences: int
) -> dict[str, Any] | None:
    """CE recovered per model on held-out sequences, if the store records models and corpus."""
    import numpy as np
    import torch

    from crossdiff.cli.harvest import load_adapter
    from crossdiff.corpus import load_sequences
    from crossdiff.crosscoder.evaluate import ce_recovered
    from crossdiff.plugins import create_plugin_manager
    from crossdiff.store import load_shard

    record = info.manifest.get("config", {}).get("record", {})
    store_cfg = info.manifest.get("config", {}).get("store", {})
    if n_sequences <= 0 or "models" not in record or "corpus" not in record:
        return None
    seqs = np.unique(np.concatenate([
        load_shard(info.shard_paths()[i])["sequences"].numpy() for i in eval_shards
    ]))[:n_sequences]  # fmt: skip
    split = load_sequences(record["corpus"])[store_cfg.get("split", "train")]
    tokens = torch.from_numpy(np.asarray(split.input_ids)[seqs].astype(np.int64))
    manager = create_plugin_manager()
    adapters = {m: load_adapter(record["models"][m], manager) for m in model.cfg.models}
    first = 1 if store_cfg.get("drop_first_position", True) else 0
    results = ce_recovered(model, adapters, sites, tokens, first_position=first)
    return {m: vars(r) for m, r in results.items()}
