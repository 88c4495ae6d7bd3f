"""The model adapter contract: how the core sees any model, dense or Mixture-of-Experts.

An adapter plugin returns :class:`AdapterFactory` objects from ``crossdiff_model_adapters``; the
core asks each, newest plugin first, whether it ``can_adapt`` a model, and the first yes wins.

Shapes: ``B`` batch, ``P`` positions, ``T`` tokens (B·P flattened), ``D`` a site's width,
``E`` experts, ``K`` experts chosen per token, ``V`` vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from crossdiff.errors import ConfigError, unknown_choice
from crossdiff.plugins import CrossdiffPluginManager, collect

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Site:
    """A place in a model whose activations can be captured."""

    name: str
    """Common name, the same across adapters where the meaning is the same: ``"2.mlp_out"``."""
    native: str
    """The model world's own name, e.g. ``"blocks.2.hook_mlp_out"``; also accepted."""
    layer: int
    """Index of the block the site belongs to."""
    dim: int
    """Width of the activation vector at this site."""


@dataclass
class Routing:
    """How one MoE layer routed ``T`` tokens, exactly as the model used it."""

    router_logits: torch.Tensor
    """``[T, E]`` the router's raw scores, before softmax or sigmoid."""
    topk_indices: torch.Tensor
    """``[T, K]`` chosen experts."""
    topk_weights: torch.Tensor
    """``[T, K]`` the weights the model multiplied each chosen expert's output by."""


@dataclass
class ExpertOutputs:
    """One MoE layer opened up, for ``T`` tokens."""

    block_input: torch.Tensor
    """``[T, D]`` the input the experts and the router saw."""
    routing: Routing
    """The routing the model used."""
    expert_outputs: torch.Tensor
    """``[T, K, D]`` each chosen expert's UNWEIGHTED output, aligned with ``routing``."""
    shared_output: torch.Tensor | None
    """``[T, D]`` the shared experts' contribution as added (gate applied), or None."""
    block_output: torch.Tensor
    """``[T, D]`` the block's output: Σ_k w_k·expert_k + shared."""


class ModelAdapter(ABC):
    """A model seen through crossdiff's eyes: sites, capture, logits, and the MoE view."""

    model: torch.nn.Module

    @abstractmethod
    def sites(self) -> list[Site]:
        """Every capturable site, in forward order."""

    def site(self, name: str) -> Site:
        """The site with common or native ``name``; the error lists the valid names."""
        for site in self.sites():
            if name in (site.name, site.native):
                return site
        raise unknown_choice("site", name, [s.name for s in self.sites()])

    @abstractmethod
    def capture(self, tokens: torch.Tensor, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """``tokens [B, P]`` -> ``{site.name: [B, P, D]}``, stopping after the last layer needed."""

    @abstractmethod
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, P]`` -> logits ``[B, P, V]``."""

    @abstractmethod
    def logits_with_replacement(
        self, tokens: torch.Tensor, site: str, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits with the activation at ``site`` replaced by ``replace(activation)``."""

    @abstractmethod
    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """A residual-stream vector ``[..., D]`` -> logits ``[..., V]`` (final norm, unembed)."""

    # -------------------------------------------------------------- MoE view

    def moe_layers(self) -> list[int]:
        """Indices of the layers whose MLP is a mixture of experts (empty for a dense model)."""
        return []

    def _require_moe(self, layer: int) -> None:
        if layer not in self.moe_layers():
            raise ConfigError(
                f"layer {layer} is not an MoE layer of this model; MoE layers: {self.moe_layers()}"
            )

    def expert_outputs(self, tokens: torch.Tensor, layer: int) -> ExpertOutputs:
        """Open MoE ``layer`` for ``tokens [B, P]``: routing and each chosen expert's output."""
        self._require_moe(layer)
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")


class AdapterFactory(Protocol):
    """What ``crossdiff_model_adapters`` returns: something that can wrap certain models."""

    name: str
    description: str

    def can_adapt(self, model: object) -> bool:
        """True if this factory handles ``model``."""
        ...

    def __call__(self, model: object) -> ModelAdapter:
        """Wrap ``model``."""
        ...


def adapt(model: object, manager: CrossdiffPluginManager) -> ModelAdapter:
    """Wrap ``model`` with the first adapter (newest plugin first) that can adapt it."""
    factories = collect(manager.hook.crossdiff_model_adapters())
    for factory in factories:
        if factory.can_adapt(model):
            return factory(model)
    names = ", ".join(f.name for f in factories) or "(none installed)"
    raise ConfigError(f"no adapter handles a {type(model).__name__}; adapters tried: {names}")
