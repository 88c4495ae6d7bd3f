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


def load(name_or_path: str) -> LoadedModel:
    """``AutoModelForCausalLM.from_pretrained`` in eval mode, plus the tokenizer if there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load a causal LM from {name_or_path!r}: {error}") from error
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
