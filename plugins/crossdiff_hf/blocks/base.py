"""What every MoE block view provides: read the gate's output, rewrite it, recompute experts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class MoEBlockView(ABC):
    """Reads one layout of MoE block (``mlp``): its gate's output, experts and shared experts.

    ``x`` is always the block's input flattened to ``[T, D]``.
    """

    def __init__(self, mlp: torch.nn.Module) -> None:
        self.mlp = mlp

    @classmethod
    @abstractmethod
    def matches(cls, mlp: torch.nn.Module) -> bool:
        """True if ``mlp`` has this layout."""

    @property
    @abstractmethod
    def n_experts(self) -> int:
        """``E`` routed experts."""

    @property
    @abstractmethod
    def top_k(self) -> int:
        """``K`` experts chosen per token."""

    @abstractmethod
    def router_logits(self, gate_output: Any, x: torch.Tensor) -> torch.Tensor:
        """``[T, E]`` the router's raw scores."""

    @abstractmethod
    def chosen(self, gate_output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices [T, K], weights [T, K])`` as the block passes them to its experts."""

    @abstractmethod
    def with_weights(self, gate_output: Any, weights: torch.Tensor) -> Any:
        """The gate's output with the ``[T, K]`` weights replaced (same slot order)."""

    @abstractmethod
    def expert_output(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """``x [N, D]`` -> ``[N, D]`` expert ``expert``'s unweighted output."""

    def shared_output(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[T, D]`` the shared experts' contribution as the block adds it, or None."""
        return None

    def expert_outputs(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``x [T, D]``, ``indices [T, K]`` -> ``[T, K, D]`` each chosen expert's output."""
        out = x.new_zeros(*indices.shape, x.shape[-1])
        for expert in indices.unique().tolist():
            tok, slot = torch.where(indices == expert)
            out[tok, slot] = self.expert_output(expert, x[tok]).to(x.dtype)
        return out
