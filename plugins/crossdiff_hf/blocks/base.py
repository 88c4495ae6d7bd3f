"""What every MoE block view provides: read the gate's output, rewrite it, recompute experts.

A view reads a block only if it knows every part of it: :meth:`MoEBlockView.check_parts` refuses a
block with a parameterised child the view does not read (an always-on MLP under an unknown name,
say), naming it, so that no part of the block's output is silently left out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from crossdiff.errors import ConfigError

ROUTER_NAMES = ("gate", "router")
"""Names of an MoE block's router child (Mixtral ``gate``, PhiMoE and GraniteMoE ``router``)."""
UNWEIGHTED_SHARED = ("shared_experts", "shared_mlp")
"""Always-on children added to the routed sum unweighted (DeepSeek, HunYuan-MoE)."""
PLUGIN_DOCS = "docs/plugins.md"


def router_name(mlp: torch.nn.Module) -> str | None:
    """The name of ``mlp``'s router child among :data:`ROUTER_NAMES`, or None."""
    return next((name for name in ROUTER_NAMES if isinstance(getattr(mlp, name, None),
                                                             torch.nn.Module)), None)  # fmt: skip


def has_parameters(module: torch.nn.Module) -> bool:
    """True if ``module`` or any of its children holds a parameter."""
    return next(module.parameters(), None) is not None


class MoEBlockView(ABC):
    """Reads one layout of MoE block (``mlp``): its gate's output, experts and shared experts.

    ``x`` is always the block's input flattened to ``[T, D]``.
    """

    def __init__(self, mlp: torch.nn.Module, path: str = "mlp") -> None:
        self.mlp = mlp
        self.path = path
        self.router_name = router_name(mlp) or "gate"
        self.check_parts()

    @classmethod
    @abstractmethod
    def matches(cls, mlp: torch.nn.Module) -> bool:
        """True if ``mlp`` has this layout."""

    def parts(self) -> set[str]:
        """Names of the children this view reads (router, experts, shared parts present)."""
        shared = {name for name in UNWEIGHTED_SHARED if getattr(self.mlp, name, None) is not None}
        return {self.router_name, "experts", *shared}

    def check_parts(self) -> None:
        """Raise a :class:`ConfigError` naming any parameterised child the view does not read."""
        known = self.parts()
        for name, child in self.mlp.named_children():
            if name not in known and has_parameters(child):
                raise ConfigError(
                    f"MoE block {self.path} ({type(self.mlp).__name__}) has a part "
                    f"{name!r} ({type(child).__name__}) that the {type(self).__name__} does not "
                    f"read (it reads {sorted(known)}); refusing the model rather than leave part "
                    f"of the block's output out: add a view for it ({PLUGIN_DOCS})"
                )

    @property
    def router(self) -> torch.nn.Module:
        """The router child."""
        return getattr(self.mlp, self.router_name)

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
        """``[T, D]`` the always-on children's sum (:data:`UNWEIGHTED_SHARED`), or None."""
        total = None
        for name in UNWEIGHTED_SHARED:
            module = getattr(self.mlp, name, None)
            if module is not None:
                out = module(x)
                total = out if total is None else total + out
        return total

    def expert_outputs(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``x [T, D]``, ``indices [T, K]`` -> ``[T, K, D]`` each chosen expert's output."""
        out = x.new_zeros(*indices.shape, x.shape[-1])
        for expert in indices.unique().tolist():
            tok, slot = torch.where(indices == expert)
            out[tok, slot] = self.expert_output(expert, x[tok]).to(x.dtype)
        return out
