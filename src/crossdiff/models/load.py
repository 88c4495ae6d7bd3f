"""Load a trained in-repo model back, by path, as a HookedTransformer with its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crossdiff.errors import ConfigError
from crossdiff.models.build import build_model
from crossdiff.models.checkpoint import load_weights_, read_model_config

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerBase

TOKENIZER_DIR = "tokenizer"


def load_model(
    path: str | Path, device: str = "cpu"
) -> tuple[HookedTransformer, PreTrainedTokenizerBase]:
    """The model saved at ``path`` (a ``train-model`` output or its ``checkpoint`` directory)
    in eval mode, with the tokenizer it was trained with (also set on the model, so
    ``model.to_tokens`` and ``model.generate`` work)."""
    from crossdiff.corpus import load_tokenizer
    from crossdiff.stages import read_manifest
    from crossdiff.verify import verify_stage_files

    path = Path(path)
    verify_stage_files(path, read_manifest(path))  # weights and cfg.json, as written
    config = read_model_config(path)
    model = build_model(config, device)
    load_weights_(model, path)
    model.eval()
    for candidate in (path / TOKENIZER_DIR, path.parent / TOKENIZER_DIR):
        if candidate.is_dir():
            tokenizer = load_tokenizer(candidate)
            break
    else:
        raise ConfigError(f"no tokenizer next to the model at {str(path)!r} ({TOKENIZER_DIR}/)")
    if len(tokenizer) != config.vocab_size:
        raise ConfigError(
            f"the tokenizer at {str(candidate)!r} has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {config.vocab_size}"
        )
    model.set_tokenizer(tokenizer, default_padding_side="right")
    return model, tokenizer
