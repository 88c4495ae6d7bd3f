"""Loading causal LMs and their tokenizers by hub name or local path (``from_pretrained``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from crossdiff.adapters import LoadedModel
from crossdiff.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any of these in a local directory means a tokenizer was saved there."""

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""``name`` or ``owner/name`` as the Hugging Face hub spells repositories."""


def looks_loadable(name_or_path: str) -> bool:
    """A directory holding a transformers ``config.json``, or a hub-style name not on disk."""
    path = Path(name_or_path)
    if path.exists():
        config = path / "config.json"
        if not config.is_file():
            return False
        try:
            return "model_type" in json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
    return bool(HUB_NAME.match(name_or_path))


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files that ``torch.save`` writes: pickles, which can run code when opened."""


def refuse_pickled_weights(path: Path) -> None:
    """Raise a one-line :class:`ConfigError` if the directory ``path`` holds its weights only as
    pickles (``pytorch_model.bin`` and the like), naming the file and how to convert it."""
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(
            f"{str(path / pickles[0])!r} is a pickle (torch.save), which can run code when "
            "opened, so crossdiff does not load it; if you trust it, convert it once to "
            'safetensors with `python -c "import sys; from transformers import '
            "AutoModelForCausalLM as M; M.from_pretrained(sys.argv[1], use_safetensors=False)"
            f'.save_pretrained(sys.argv[2])" {str(path)!r} CONVERTED_DIR` and load CONVERTED_DIR'
        )


def load(name_or_path: str) -> LoadedModel:
    """``AutoModelForCausalLM.from_pretrained`` in eval mode, plus the tokenizer if there is one.

    Weights are read from safetensors only: a directory (or hub repository) holding its weights
    as a pickle is refused with a one-line error saying how to convert it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refuse_pickled_weights(Path(name_or_path))
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot load a causal LM from {name_or_path!r} (safetensors weights only): {first}"
        ) from error
    return LoadedModel(model.eval(), _tokenizer(name_or_path, AutoTokenizer))


def _tokenizer(name_or_path: str, auto: type) -> object | None:
    """The saved tokenizer, or None (never a default one made up from the model type)."""
    path = Path(name_or_path)
    if path.exists() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return auto.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError):
        return None
