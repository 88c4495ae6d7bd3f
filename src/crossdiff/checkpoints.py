"""Training state without pickle: optimiser and RNG states as safetensors + JSON.

Opening a pickle runs whatever code its author put in it, so no crossdiff checkpoint is a pickle:
tensors go to ``*.safetensors`` (a header and raw bytes), everything else to JSON. A checkpoint
written by an older crossdiff (``*.pt`` files) is refused with an error that names the file and
the command that converts it (:func:`convert_legacy_checkpoint`, which reads the old files with
``torch.load(weights_only=True)``: torch's restricted unpickler, which refuses code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError, DamagedFileError
from crossdiff.stages import OVERWRITE_HINT, atomic_write_json

if TYPE_CHECKING:
    import torch

LEGACY_FILES = ("optimizer.pt", "rng.pt", "trainer.pt")
"""Pickle files of checkpoints written before crossdiff 0.2."""


class CheckpointError(DamagedFileError):
    """A checkpoint is missing, damaged, or in a format crossdiff no longer opens."""


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) to the safetensors file ``path``."""
    from crossdiff.stages import save_safetensors

    save_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or damaged one is a :class:`CheckpointError`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for every bad header
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is damaged: not a readable safetensors file "
            f"({error}); to start over, {OVERWRITE_HINT}"
        ) from None


def load_json(path: str | Path) -> Any:
    """Read a JSON file of a checkpoint; a missing or damaged one is a :class:`CheckpointError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is damaged: not valid JSON ({error}); to start over, "
            f"{OVERWRITE_HINT}"
        ) from None


def refuse_legacy(directory: str | Path) -> None:
    """Raise a :class:`CheckpointError` if ``directory`` holds a pickle checkpoint file."""
    for name in LEGACY_FILES:
        path = Path(directory) / name
        if path.is_file():
            raise CheckpointError(
                f"{str(path)!r} is a pickle checkpoint of an older crossdiff, which is not opened "
                "(unpickling can run code). If you trust it, convert it with: python -m "
                f"crossdiff.checkpoints {str(Path(directory))!r}"
            )


# ----------------------------------------------------------------------------- optimiser


def save_optimizer(directory: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Write ``optimizer.safetensors`` (every state tensor) and ``optimizer.json`` (the rest)."""
    save_optimizer_state(directory, optimizer.state_dict())


def save_optimizer_state(directory: str | Path, state_dict: dict[str, Any]) -> None:
    """:func:`save_optimizer` for an optimiser's ``state_dict()``."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            key = f"{index}.{name}"
            if hasattr(value, "detach"):
                tensors[key] = value
            else:
                scalars[key] = value
    directory = Path(directory)
    save_tensors(directory / "optimizer.safetensors", tensors)
    atomic_write_json(
        directory / "optimizer.json",
        {"param_groups": state_dict["param_groups"], "scalars": scalars},
    )


def load_optimizer_(directory: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore ``optimizer`` from :func:`save_optimizer`'s files (tensors go to the params'
    devices and dtypes, as ``load_state_dict`` does)."""
    directory = Path(directory)
    tensors = load_tensors(directory / "optimizer.safetensors")
    meta = load_json(directory / "optimizer.json")
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------- RNG


def save_rng(path: str | Path) -> None:
    """Write torch's CPU (and every CUDA device's) generator state to a safetensors file."""
    import torch

    states = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = s
    save_tensors(path, states)


def load_rng(path: str | Path) -> None:
    """Restore the generator states :func:`save_rng` wrote (CUDA ones where CUDA is present)."""
    import torch

    states = load_tensors(path)
    torch.random.set_rng_state(states["cpu"])
    cuda = [states[f"cuda.{i}"] for i in range(len(states) - 1) if f"cuda.{i}" in states]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# ----------------------------------------------------------------------------- legacy


def convert_legacy_checkpoint(directory: str | Path) -> list[str]:
    """Rewrite the pickle files of an old checkpoint in ``directory`` as safetensors + JSON.

    Reads them with ``torch.load(weights_only=True)``, which loads tensors and plain containers
    only and refuses anything that would run code. Returns the files converted."""
    import torch

    directory = Path(directory)
    converted = []
    for name in LEGACY_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:
            raise CheckpointError(
                f"{str(path)!r} holds more than tensors and plain values; refused ({error})"
            ) from None
        if name == "rng.pt":
            states = {"cpu": data["cpu"]}
            states.update({f"cuda.{i}": s for i, s in enumerate(data.get("cuda", []))})
            save_tensors(directory / "rng.safetensors", states)
        else:
            optimizer = data["optimizer"] if name == "trainer.pt" else data
            save_optimizer_state(directory, optimizer)
            if name == "trainer.pt":
                save_tensors(
                    directory / "trainer.safetensors",
                    {"tokens_since_fired": data["tokens_since_fired"]},
                )
                counters = {k: data[k] for k in ("step", "batches_consumed", "nan_batches")}
                atomic_write_json(
                    directory / "trainer_state.json",
                    {**counters, "train_config": data.get("train_config", {})},
                )
        path.unlink()
        converted.append(name)
    return converted


def main(argv: list[str] | None = None) -> int:
    """``python -m crossdiff.checkpoints DIR``: convert an old pickle checkpoint in place."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m crossdiff.checkpoints CHECKPOINT_DIR", file=sys.stderr)
        return 2
    try:
        converted = convert_legacy_checkpoint(args[0])
    except CrossdiffError as error:
        print(f"crossdiff: error: {error}", file=sys.stderr)
        return 2
    print(f"converted {', '.join(converted) or 'nothing (no pickle files found)'} in {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
