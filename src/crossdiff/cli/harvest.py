"""``crossdiff harvest``: the same corpus tokens through several models, into a store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crossdiff.cli.options import parse_assignments
from crossdiff.errors import ConfigError

SETTINGS = (
    "dtype",
    "split",
    "max_sequences",
    "batch_sequences",
    "shard_sequences",
    "seed",
)
"""StoreConfig fields that have a command-line option of the same name."""
MODEL_DTYPES = ("fp32", "bf16", "fp16")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``harvest``."""
    cmd = commands.add_parser(
        "harvest",
        help="capture paired activations of several models into a store (resumable)",
        description="Feed the same corpus token batches to every model and write their "
        "activations at the chosen sites into shards, with a manifest (models, sites, dims, "
        "tokens, dtype, normalisation factors). Rerun the same command to resume after a kill. "
        "Under `torchrun --nproc_per_node N --no-python crossdiff harvest ...` the shards are "
        "dealt out to the N processes, each on its own GPU (--batch-sequences is per process).",
    )
    cmd.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model to harvest (repeat): in-repo model directory, HF directory or name",
    )
    cmd.add_argument(
        "--site",
        action="append",
        required=True,
        metavar="[MODEL:]SITE",
        help="a site such as 4.mlp_out or blocks.4.hook_mlp_out (repeat); MODEL: limits it",
    )
    cmd.add_argument(
        "--alignment",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="for a model whose tokenizer differs from the corpus's: an int array mapping "
        "each corpus token id to the model's id",
    )
    cmd.add_argument("--corpus", required=True, type=Path, help="a corpus stage directory")
    cmd.add_argument("--out", required=True, type=Path, help="store directory to write")
    cmd.add_argument("--config", type=Path, help="TOML file of store settings (StoreConfig)")
    cmd.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="storage precision")
    cmd.add_argument(
        "--device", default="auto",
        help="where the models run: auto (CUDA where present), cpu, cuda, cuda:N (default auto)",
    )  # fmt: skip
    cmd.add_argument(
        "--model-dtype", choices=MODEL_DTYPES, default="fp32",
        help="precision the models run in (default fp32; bf16 halves their memory on a GPU)",
    )  # fmt: skip
    cmd.add_argument("--split", help="corpus split to harvest (default train)")
    cmd.add_argument("--max-sequences", type=int, help="harvest at most this many sequences")
    cmd.add_argument("--batch-sequences", type=int, help="sequences per forward pass")
    cmd.add_argument("--shard-sequences", type=int, help="sequences per shard")
    cmd.add_argument("--seed", type=int, help="seed of the sequence order")
    cmd.add_argument(
        "--keep-first-position",
        action="store_true",
        help="also store position 0 (dropped by default)",
    )
    cmd.add_argument(
        "--overwrite", action="store_true", help="replace a store harvested with other settings"
    )
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the models and the corpus, harvest, and print a summary of the store."""
    from crossdiff.config import from_dict, load_toml
    from crossdiff.corpus import load_sequences, load_tokenizer
    from crossdiff.plugins import create_plugin_manager
    from crossdiff.store import StoreConfig, harvest

    settings = load_toml(args.config) if args.config else {}
    settings.update({k: getattr(args, k) for k in SETTINGS if getattr(args, k, None) is not None})
    if args.keep_first_position:
        settings["drop_first_position"] = False
    config = from_dict(StoreConfig, settings, "store")
    specs = parse_models(args.model)
    sites = parse_sites(args.site, list(specs))
    splits = load_sequences(args.corpus)
    if config.split not in splits:
        raise ConfigError(f"corpus has no split {config.split!r}; it has {sorted(splits)}")
    alignments = (
        {
            name: _load_alignment(path)
            for name, path in parse_models(args.alignment, "--alignment").items()
        }
        if args.alignment
        else None
    )
    manager = create_plugin_manager()
    adapters = {name: load_adapter(path, manager, args.device) for name, path in specs.items()}
    record = store_record(specs, args.corpus, args.out)
    if args.model_dtype != "fp32":
        from crossdiff.store.capture import cast_models

        cast_models(adapters, args.model_dtype)
        record["model_dtype"] = args.model_dtype
    info = harvest(
        adapters,
        sites,
        splits[config.split],
        args.out,
        config,
        corpus_tokenizer=load_tokenizer(Path(args.corpus) / "tokenizer"),
        alignments=alignments,
        record=record,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    from crossdiff.stages import is_main_process

    if not is_main_process():
        return 0
    print(f"store {info.path}: {info.tokens:,} tokens, dtype {info.dtype}")
    for model, dims in info.dims.items():
        for site, dim in dims.items():
            factor = info.norm_factors[model][site]
            print(f"  {model:<12} {site:<20} d={dim:<6} norm factor {factor:.4g}")
    return 0


def store_record(models: dict[str, str], corpus: Path, out: Path) -> dict[str, Any]:
    """The models and corpus as the store records them: relative to the store when they lie in
    the same run directory (two levels up: ``RUN/activations/train``), absolute otherwise."""
    from crossdiff.stages import reference

    run_dir = Path(out).resolve().parent.parent
    return {
        "models": {name: reference(path, out, run_dir) for name, path in models.items()},
        "corpus": reference(corpus, out, run_dir),
    }


def parse_models(specs: list[str], option: str = "--model") -> dict[str, str]:
    """``["a=path", ...]`` -> ``{"a": "path"}``, with a clear error for a malformed entry."""
    models = parse_assignments(specs, option, "NAME=PATH")
    if len(models) < 1:
        raise ConfigError(f"give at least one {option} NAME=PATH")
    return models


def _load_alignment(path: str) -> Any:
    import numpy as np

    try:
        return np.load(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read alignment {path!r} (a .npy int array): {error}") from error


def parse_sites(specs: list[str], models: list[str]) -> dict[str, list[str]]:
    """``--site`` values -> model -> sites; ``MODEL:SITE`` applies to one model, ``SITE`` to all."""
    sites: dict[str, list[str]] = {m: [] for m in models}
    for spec in specs:
        model, sep, site = spec.rpartition(":")
        targets = [model] if sep else models
        if sep and model not in sites:
            raise ConfigError(f"--site {spec!r} names unknown model {model!r}; models: {models}")
        for target in targets:
            sites[target].append(site)
    return sites


def load_adapter(path: str, manager: Any, device: str | None = None) -> Any:
    """An adapter for the model at ``path`` on ``device``, through the model loader plugins."""
    from crossdiff import adapters

    return adapters.load_adapter(path, manager, device)
