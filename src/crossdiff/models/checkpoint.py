"""Weights as ``cfg.json`` + ``model.safetensors``; training checkpoints that resume exactly.

A training checkpoint directory holds the weights, ``optimizer.safetensors`` + ``optimizer.json``
(AdamW moments, step counts and parameter groups), ``rng.safetensors`` (torch's CPU and CUDA
generator states) and ``trainer_state.json`` (step, tokens seen, loss history, the training
config). Nothing is a pickle (``crossdiff.checkpoints``). It is written to a temporary directory and
renamed into place, so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.config import from_dict, to_dict
from crossdiff.errors import ConfigError
from crossdiff.models.config import ModelConfig
from crossdiff.stages import atomic_directory, atomic_write_json

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "model.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


def save_weights(directory: str | Path, model: HookedTransformer, config: ModelConfig) -> None:
    """Write ``cfg.json`` (the :class:`ModelConfig`) and ``model.safetensors`` (parameters)."""
    from crossdiff.stages import save_safetensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / CONFIG_FILE, {"model": to_dict(config)})
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    save_safetensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})


def read_model_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` saved in ``directory/cfg.json``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{str(directory)!r} holds no model: {CONFIG_FILE} is missing")
    return from_dict(ModelConfig, json.loads(path.read_text(encoding="utf-8"))["model"], "model")


def load_weights_(model: HookedTransformer, directory: str | Path) -> None:
    """Copy the parameters in ``directory/model.safetensors`` into ``model`` (all must match)."""
    from crossdiff.checkpoints import load_tensors

    tensors = load_tensors(Path(directory) / WEIGHTS_FILE)
    params = dict(model.named_parameters())
    missing, unexpected = set(params) - set(tensors), set(tensors) - set(params)
    if missing or unexpected:
        raise ConfigError(
            f"weights in {str(directory)!r} do not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    import torch

    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def save_checkpoint(
    directory: str | Path,
    model: HookedTransformer,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Atomically replace the checkpoint at ``directory`` with the current training state."""
    from crossdiff.checkpoints import save_optimizer, save_rng

    with atomic_directory(directory) as tmp:
        save_weights(tmp, model, config)
        save_optimizer(tmp, optimizer)
        save_rng(tmp / RNG_FILE)
        atomic_write_json(tmp / STATE_FILE, state)


def load_checkpoint_(
    directory: str | Path, model: HookedTransformer, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from ``directory``; return its trainer state."""
    from crossdiff.checkpoints import load_json, load_optimizer_, load_rng, refuse_legacy

    directory = Path(directory)
    refuse_legacy(directory)
    load_weights_(model, directory)
    load_optimizer_(directory, optimizer)
    load_rng(directory / RNG_FILE)
    return load_json(directory / STATE_FILE)


def has_checkpoint(directory: str | Path) -> bool:
    """True if ``directory`` holds a complete training checkpoint."""
    return (Path(directory) / STATE_FILE).is_file()
