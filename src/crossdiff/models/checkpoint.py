"""Weights as ``cfg.json`` + ``model.safetensors``; training checkpoints that resume exactly.

A training checkpoint directory holds the weights, ``optimizer.pt`` (AdamW moments and step
counts), ``rng.pt`` (torch's CPU and CUDA generator states) and ``trainer_state.json`` (step,
tokens seen, loss history, the training config). It is written to a temporary directory and
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
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"


def save_weights(directory: str | Path, model: HookedTransformer, config: ModelConfig) -> None:
    """Write ``cfg.json`` (the :class:`ModelConfig`) and ``model.safetensors`` (parameters)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / CONFIG_FILE, {"model": to_dict(config)})
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def read_model_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` saved in ``directory/cfg.json``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{str(directory)!r} holds no model: {CONFIG_FILE} is missing")
    return from_dict(ModelConfig, json.loads(path.read_text(encoding="utf-8"))["model"], "model")


def load_weights_(model: HookedTransformer, directory: str | Path) -> None:
    """Copy the parameters in ``directory/model.safetensors`` into ``model`` (all must match)."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
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
    import torch

    with atomic_directory(directory) as tmp:
        save_weights(tmp, model, config)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        rng = {"cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / RNG_FILE)
        atomic_write_json(tmp / STATE_FILE, state)


def load_checkpoint_(
    directory: str | Path, model: HookedTransformer, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from ``directory``; return its trainer state."""
    import torch

    directory = Path(directory)
    load_weights_(model, directory)
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
    rng = torch.load(directory / RNG_FILE, weights_only=False)
    torch.random.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))


def has_checkpoint(directory: str | Path) -> bool:
    """True if ``directory`` holds a complete training checkpoint."""
    return (Path(directory) / STATE_FILE).is_file()
