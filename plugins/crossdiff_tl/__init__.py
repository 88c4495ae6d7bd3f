"""TransformerLens adapter: the in-repo models and any ``HookedTransformer``, native MoE included.

Also the loader of in-repo model directories (``cfg.json`` + ``model.safetensors`` + tokenizer, as
``crossdiff train-model`` writes them). Importing this plugin does not import transformer_lens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from crossdiff import hookimpl
from crossdiff.adapters import LoadedModel, ModelAdapter


class TransformerLensFactory:
    """Adapts ``transformer_lens.HookedTransformer`` models (dense or native MoE)."""

    name = "transformer_lens"
    description = "any HookedTransformer; hook names like blocks.{l}.hook_mlp_out"

    def can_adapt(self, model: object) -> bool:
        """True for a HookedTransformer (checked without importing transformer_lens)."""
        lens = sys.modules.get("transformer_lens")
        return lens is not None and isinstance(model, lens.HookedTransformer)

    def __call__(self, model: object, tokenizer: Any = None) -> ModelAdapter:
        """Wrap ``model``; ``tokenizer`` defaults to the model's own."""
        from crossdiff_tl.adapter import TransformerLensAdapter

        return TransformerLensAdapter(model, tokenizer)


class InRepoLoader:
    """Loads in-repo model directories with ``crossdiff.models.load_model``."""

    name = "crossdiff_models"
    description = "in-repo HookedTransformer directories (cfg.json + model.safetensors)"

    def can_load(self, name_or_path: str) -> bool:
        """A directory whose ``cfg.json`` holds a ``model`` section."""
        config = Path(name_or_path) / "cfg.json"
        try:
            return "model" in json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return False

    def load(self, name_or_path: str) -> LoadedModel:
        """The model in eval mode with the tokenizer saved next to it."""
        from crossdiff.models import load_model

        model, tokenizer = load_model(name_or_path)
        return LoadedModel(model, tokenizer)


@hookimpl
def crossdiff_model_loaders() -> list[InRepoLoader]:
    """The in-repo model loader."""
    return [InRepoLoader()]


@hookimpl
def crossdiff_model_adapters() -> list[TransformerLensFactory]:
    """The TransformerLens adapter."""
    return [TransformerLensFactory()]
