"""Hugging Face adapter through nnsight: dense causal LMs and MoE families of transformers 5.

MoE layouts read: Mixtral, OLMoE, Qwen2-MoE (shared expert with sigmoid gate), Qwen3-MoE,
DeepSeek-V2, DeepSeek-V3 (fused experts), and the original DeepSeekMoE remote-code layout
(expert ``ModuleList``). Importing this plugin imports neither transformers nor nnsight.
"""

from __future__ import annotations

import sys
from typing import Any

from crossdiff import hookimpl
from crossdiff.adapters import LoadedModel, ModelAdapter


class HuggingFaceFactory:
    """Adapts ``transformers.PreTrainedModel`` causal LMs."""

    name = "huggingface"
    description = "transformers causal LMs via nnsight (dense, fused MoE, DeepSeekMoE layout)"

    def can_adapt(self, model: object) -> bool:
        """True for a transformers model (checked without importing transformers)."""
        transformers = sys.modules.get("transformers")
        return transformers is not None and isinstance(model, transformers.PreTrainedModel)

    def __call__(self, model: object, tokenizer: Any = None) -> ModelAdapter:
        """Wrap ``model`` (put in eval mode) with its ``tokenizer``."""
        from crossdiff_hf.adapter import HuggingFaceAdapter

        return HuggingFaceAdapter(model, tokenizer)


class HuggingFaceLoader:
    """Loads causal LMs with ``from_pretrained``: a local directory or a hub name."""

    name = "huggingface"
    description = "AutoModelForCausalLM.from_pretrained(name or directory with config.json)"

    def can_load(self, name_or_path: str) -> bool:
        """A directory with ``config.json``, or a hub-style name that is not a local path."""
        from crossdiff_hf.loader import looks_loadable

        return looks_loadable(name_or_path)

    def load(self, name_or_path: str) -> LoadedModel:
        """The model in eval mode, with its tokenizer if one is saved alongside."""
        from crossdiff_hf.loader import load

        return load(name_or_path)


@hookimpl
def crossdiff_model_adapters() -> list[HuggingFaceFactory]:
    """The Hugging Face adapter."""
    return [HuggingFaceFactory()]


@hookimpl
def crossdiff_model_loaders() -> list[HuggingFaceLoader]:
    """The Hugging Face loader."""
    return [HuggingFaceLoader()]
