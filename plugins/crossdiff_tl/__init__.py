"""TransformerLens adapter: the in-repo models and any ``HookedTransformer``, native MoE included.

Importing this plugin does not import transformer_lens; the adapter module loads on first use.
"""

from __future__ import annotations

import sys
from typing import Any

from crossdiff import hookimpl
from crossdiff.adapters import ModelAdapter


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


@hookimpl
def crossdiff_model_adapters() -> list[TransformerLensFactory]:
    """The TransformerLens adapter."""
    return [TransformerLensFactory()]
