"""transformers 5 MoE blocks with fused experts: Mixtral, OLMoE, Qwen3-MoE, DeepSeek-V2/V3,
PhiMoE, GraniteMoE, HunYuan-MoE.

The router (``gate``, or ``router`` in PhiMoE and GraniteMoE) returns ``(router_logits,
top_k_weights, top_k_index)`` and the block passes the last two to ``experts(x, top_k_index,
top_k_weights)``. The experts are two 3-D tensors, ``gate_up_proj [E, 2I, D]`` (gate rows first,
then up) and ``down_proj [E, D, I]``, so expert ``e`` is ``down_e(act(gate_e x) · up_e x)``.
DeepSeek-V2/V3 add ``shared_experts(x)`` and HunYuan-MoE ``shared_mlp(x)``, unweighted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from crossdiff.errors import ConfigError
from crossdiff_hf.blocks.base import MoEBlockView, router_name

SUPPORTED_FLAGS = {"has_gate": True, "has_bias": False, "is_transposed": False}
"""The fused-expert weight layout this view recomputes (transformers' defaults)."""


class FusedExpertsView(MoEBlockView):
    """A block with ``gate`` returning a (logits, weights, indices) triple and fused ``experts``."""

    def __init__(self, mlp: torch.nn.Module, path: str = "mlp") -> None:
        super().__init__(mlp, path)
        experts = mlp.experts
        for flag, value in SUPPORTED_FLAGS.items():
            if getattr(experts, flag, value) != value:
                raise ConfigError(
                    f"{type(experts).__name__} has {flag}={not value}; the fused-experts view "
                    f"supports {SUPPORTED_FLAGS} only"
                )

    @classmethod
    def matches(cls, mlp: torch.nn.Module) -> bool:
        """A router (``gate`` or ``router``) and ``experts`` holding 3-D ``gate_up_proj``."""
        experts = getattr(mlp, "experts", None)
        return (
            router_name(mlp) is not None
            and isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor)
            and experts.gate_up_proj.dim() == 3
        )

    @property
    def n_experts(self) -> int:
        """``experts.gate_up_proj.shape[0]``."""
        return self.mlp.experts.gate_up_proj.shape[0]

    @property
    def top_k(self) -> int:
        """The router's ``top_k``."""
        return self.router.top_k

    def router_logits(self, gate_output: Any, x: torch.Tensor) -> torch.Tensor:
        """The gate's first output."""
        return gate_output[0]

    def chosen(self, gate_output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate's third (indices) and second (weights) outputs."""
        return gate_output[2], gate_output[1]

    def with_weights(self, gate_output: Any, weights: torch.Tensor) -> Any:
        """``(logits, weights, indices)`` with new weights."""
        return (gate_output[0], weights.to(gate_output[1].dtype), gate_output[2])

    def expert_output(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """``down_e(act(gate_e x) · up_e x)`` from the fused tensors."""
        experts = self.mlp.experts
        gate, up = F.linear(x, experts.gate_up_proj[expert]).chunk(2, dim=-1)  # [N, I] each
        return F.linear(experts.act_fn(gate) * up, experts.down_proj[expert])  # [N, D]
