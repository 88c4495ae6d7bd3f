"""Views of the Hugging Face MoE block layouts, one module per layout where they differ.

:func:`find_view` returns the first view whose ``matches(mlp)`` is true, None for a dense MLP,
and raises for a block that has the structure of a mixture of experts (an ``experts`` or a
router child) in a layout no view reads — never treating it as dense.
"""

from __future__ import annotations

import torch

from crossdiff.errors import ConfigError
from crossdiff_hf.blocks.base import PLUGIN_DOCS, ROUTER_NAMES, MoEBlockView
from crossdiff_hf.blocks.deepseek_moe import DeepseekMoEView
from crossdiff_hf.blocks.fused import FusedExpertsView
from crossdiff_hf.blocks.qwen2_moe import GatedSharedExpertView

VIEWS: tuple[type[MoEBlockView], ...] = (GatedSharedExpertView, FusedExpertsView, DeepseekMoEView)
"""Known layouts, most specific first."""
MOE_MARKERS = ("experts", *ROUTER_NAMES)
"""Children whose presence makes a block a mixture of experts, whatever its family."""


def looks_like_moe(mlp: torch.nn.Module) -> bool:
    """True if ``mlp`` has an ``experts`` child or a router child (``gate``/``router``); a dense
    gated MLP names its projection ``gate_proj``, never ``gate``."""
    return any(isinstance(getattr(mlp, name, None), torch.nn.Module) for name in MOE_MARKERS)


def zero_computation_experts(mlp: torch.nn.Module) -> int:
    """How many of ``mlp``'s routed choices are identity ("zero-computation") experts (e.g.
    LongcatFlash's ``zero_expert_num``): an ``experts`` child with such a count or an
    ``nn.Identity`` inside it. 0 for an ordinary MoE block or a dense MLP."""
    experts = getattr(mlp, "experts", None)
    if not isinstance(experts, torch.nn.Module):
        return 0
    declared = getattr(experts, "zero_expert_num", 0)
    if isinstance(declared, int) and declared > 0:
        return declared
    return sum(isinstance(m, torch.nn.Identity) for m in experts.modules())


def find_view(mlp: torch.nn.Module, path: str = "mlp") -> MoEBlockView | None:
    """The view that reads ``mlp`` (at module ``path``), None if it is dense; raise otherwise.

    A block routing some tokens to identity ("zero-computation") experts is refused by name:
    the views count every routed choice as a computed expert, which those are not."""
    identity = zero_computation_experts(mlp)
    if identity:
        raise ConfigError(
            f"{path} is a {type(mlp).__name__} whose router also chooses {identity} "
            "zero-computation (identity) expert(s), which pass a token through unchanged; "
            "crossdiff's MoE views count every routed choice as a computed expert (routing "
            "shares, per-expert outputs, early decoding), so this family (e.g. LongcatFlash) is "
            f"not supported: add a view that names the identity experts ({PLUGIN_DOCS})"
        )
    for view in VIEWS:
        if view.matches(mlp):
            return view(mlp, path)
    if looks_like_moe(mlp):
        children = ", ".join(f"{n} ({type(c).__name__})" for n, c in mlp.named_children())
        raise ConfigError(
            f"{path} is a {type(mlp).__name__} with the structure of a mixture of experts "
            f"({children}) but no MoE view reads its router/expert layout (known: "
            f"{', '.join(v.__name__ for v in VIEWS)}); add one in an adapter plugin "
            f"({PLUGIN_DOCS})"
        )
    return None


__all__ = ["VIEWS", "MoEBlockView", "find_view", "looks_like_moe", "zero_computation_experts"]
