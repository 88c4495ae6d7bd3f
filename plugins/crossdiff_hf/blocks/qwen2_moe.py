"""Qwen2-MoE: fused experts plus one shared expert scaled by a sigmoid gate.

The block adds ``sigmoid(shared_expert_gate(x)) · shared_expert(x)`` to the routed sum; the
routed part is read exactly as in :mod:`crossdiff_hf.blocks.fused`.
"""

from __future__ import annotations

import torch

from crossdiff_hf.blocks.fused import FusedExpertsView


class GatedSharedExpertView(FusedExpertsView):
    """A fused-experts block with ``shared_expert`` and ``shared_expert_gate``."""

    @classmethod
    def matches(cls, mlp: torch.nn.Module) -> bool:
        """Fused experts plus a ``shared_expert_gate``."""
        return super().matches(mlp) and hasattr(mlp, "shared_expert_gate")

    def parts(self) -> set[str]:
        """The fused parts plus ``shared_expert`` and ``shared_expert_gate``."""
        return {*super().parts(), "shared_expert", "shared_expert_gate"}

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(shared_expert_gate(x)) · shared_expert(x)``, ``[T, D]``."""
        gated = torch.sigmoid(self.mlp.shared_expert_gate(x)) * self.mlp.shared_expert(x)
        other = super().shared_output(x)
        return gated if other is None else gated + other
