"""Views of the Hugging Face MoE block layouts, one module per layout where they differ.

:func:`find_view` returns the first view whose ``matches(mlp)`` is true, or None for a dense MLP.
"""

from __future__ import annotations

import torch

from crossdiff_hf.blocks.base import MoEBlockView
from crossdiff_hf.blocks.deepseek_moe import DeepseekMoEView
from crossdiff_hf.blocks.fused import FusedExpertsView
from crossdiff_hf.blocks.qwen2_moe import GatedSharedExpertView

VIEWS: tuple[type[MoEBlockView], ...] = (GatedSharedExpertView, FusedExpertsView, DeepseekMoEView)
"""Known layouts, most specific first."""


def find_view(mlp: torch.nn.Module) -> MoEBlockView | None:
    """The view that reads ``mlp``, or None if ``mlp`` is not a known MoE block."""
    for view in VIEWS:
        if view.matches(mlp):
            return view(mlp)
    return None


__all__ = ["VIEWS", "MoEBlockView", "find_view"]
