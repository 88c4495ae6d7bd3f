"""Where the parts of a Hugging Face causal LM live: decoder layers, attention, MLP, final norm.

Found from module names, so one adapter serves Llama-style (``model.layers[l].self_attn/.mlp``,
``model.norm``) and GPT-2-style (``transformer.h[l].attn/.mlp``, ``transformer.ln_f``) models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdiff.errors import ConfigError

LAYER_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
ATTENTION_NAMES = ("self_attn", "attn", "attention")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe")
FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


@dataclass(frozen=True)
class Layout:
    """Module paths of one causal LM, relative to the model's root."""

    layers: str
    """The decoder layers' ``ModuleList``, e.g. ``"model.layers"``."""
    attention: str
    """The attention child of each layer, e.g. ``"self_attn"``."""
    mlp: str
    """The MLP (or MoE block) child of each layer, e.g. ``"mlp"``."""
    final_norm: str
    """The norm before the unembedding, e.g. ``"model.norm"``."""

    def layer(self, index: int) -> str:
        """Path of decoder layer ``index``."""
        return f"{self.layers}.{index}"


def submodule(root: object, path: str) -> object:
    """``root.a.0.b`` for ``path="a.0.b"``: works for torch modules and nnsight envoys alike."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _child(module: torch.nn.Module, names: tuple[str, ...], what: str) -> str:
    for name in names:
        if hasattr(module, name):
            return name
    raise ConfigError(f"no {what} module among {names} in {type(module).__name__}")


def find_layout(model: torch.nn.Module) -> Layout:
    """The :class:`Layout` of ``model``; a clear error if it is not a known causal-LM shape."""
    modules = dict(model.named_modules())
    layers = next((path for path in LAYER_LISTS if path in modules), None)
    if layers is None:
        raise ConfigError(
            f"cannot find the decoder layers of a {type(model).__name__}; looked for {LAYER_LISTS}"
        )
    first = modules[layers][0]
    parent = layers.rsplit(".", 1)[0]
    norm = next((f"{parent}.{n}" for n in FINAL_NORMS if f"{parent}.{n}" in modules), None)
    if norm is None:
        raise ConfigError(f"no final norm among {FINAL_NORMS} under {parent!r}")
    return Layout(
        layers=layers,
        attention=_child(first, ATTENTION_NAMES, "attention"),
        mlp=_child(first, MLP_NAMES, "MLP"),
        final_norm=norm,
    )
