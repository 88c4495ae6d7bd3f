"""The original DeepSeekMoE remote-code layout (deepseek-moe-16b).

``experts`` is a ``ModuleList`` of gated MLPs; ``gate`` returns ``(topk_idx, topk_weight,
aux_loss)`` from ``softmax(W_gate x)`` (top-k unsorted, renormalised iff ``norm_topk_prob``) and
exposes no logits, so the router logits are ``W_gate x`` recomputed with the gate's own weight;
``shared_experts`` (one MLP, ``n_shared_experts`` wide) is added unweighted. Dense layers
(``first_k_dense_replace``) have no gate and are not MoE layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from crossdiff_hf.blocks.base import MoEBlockView


class DeepseekMoEView(MoEBlockView):
    """A block with a ``ModuleList`` of experts and a gate returning (indices, weights, aux)."""

    @classmethod
    def matches(cls, mlp: torch.nn.Module) -> bool:
        """``experts`` is a ModuleList and ``gate`` holds a ``weight [E, D]``."""
        experts = getattr(mlp, "experts", None)
        gate = getattr(mlp, "gate", None)
        return isinstance(experts, torch.nn.ModuleList) and isinstance(
            getattr(gate, "weight", None), torch.Tensor
        )

    @property
    def n_experts(self) -> int:
        """``len(experts)``."""
        return len(self.mlp.experts)

    @property
    def top_k(self) -> int:
        """The gate's ``top_k``."""
        return self.mlp.gate.top_k

    def router_logits(self, gate_output: Any, x: torch.Tensor) -> torch.Tensor:
        """``W_gate x``, as the gate computes it before its softmax."""
        return F.linear(x, self.mlp.gate.weight)

    def chosen(self, gate_output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate's first (indices) and second (weights) outputs."""
        return gate_output[0], gate_output[1]

    def with_weights(self, gate_output: Any, weights: torch.Tensor) -> Any:
        """``(indices, weights, aux_loss)`` with new weights."""
        return (gate_output[0], weights.to(gate_output[1].dtype), *gate_output[2:])

    def expert_output(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """``experts[expert](x)``."""
        return self.mlp.experts[expert](x)
