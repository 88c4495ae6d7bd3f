"""The model adapter contract: how the core sees any model, dense or Mixture-of-Experts.

An adapter plugin returns :class:`AdapterFactory` objects from ``crossdiff_model_adapters``; the
core asks each, newest plugin first, whether it ``can_adapt`` a model, and the first yes wins.
A loader plugin returns :class:`ModelLoader` objects from ``crossdiff_model_loaders``; they turn a
name or a path into a model and its tokenizer (:func:`load_adapter` chains both).

Shapes: ``B`` batch, ``P`` positions, ``T`` tokens (B·P flattened, batch-major), ``D`` a site's
width, ``E`` experts, ``K`` experts chosen per token, ``V`` vocabulary.

The MoE view follows one convention in every adapter (docs/adapters.md):

- :class:`Routing` slots are sorted by weight, largest first; the weights are exactly those the
  model multiplied the expert outputs by (after its own renormalisation and scaling).
- A restricted forward (:meth:`ModelAdapter.forward_restricted`) keeps the ``n`` largest-weight
  experts of the ``K`` chosen with their weights UNCHANGED (not renormalised) unless
  ``renormalise=True``, which rescales the kept weights to the sum of the ``K`` original ones.
  Ablating an expert zeroes its weight where it was chosen; nothing is re-routed. Shared
  experts are never touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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
    """``[T, K]`` chosen experts, sorted by weight (largest first)."""
    topk_weights: torch.Tensor
    """``[T, K]`` the weights the model multiplied each chosen expert's output by."""
    router_input: torch.Tensor | None = None
    """``[T, D]`` the vector the router scored (the block's input), or None if not known."""


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

    def contribution(self, keep_top_n: int | None = None) -> torch.Tensor:
        """``[T, D]`` Σ over the ``keep_top_n`` largest-weight slots (all if None) of w·expert."""
        n = keep_top_n or self.expert_outputs.shape[1]
        weights = self.routing.topk_weights[:, :n, None].to(self.expert_outputs.dtype)
        return (weights * self.expert_outputs[:, :n]).sum(1)

    def for_expert(self, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens [N], weights [N], outputs [N, D])``: the N tokens routed to ``expert``."""
        tokens, slots = (self.routing.topk_indices == expert).nonzero(as_tuple=True)
        weights = self.routing.topk_weights[tokens, slots]
        return tokens, weights, self.expert_outputs[tokens, slots]


@dataclass
class RestrictedForward:
    """The result of a forward pass with routing restricted in some MoE layers."""

    logits: torch.Tensor
    """``[B, P, V]`` the model's logits under the restriction."""
    block_outputs: dict[int, torch.Tensor]
    """MoE layer -> ``[T, D]`` that block's output under the restriction."""


class ModelAdapter(ABC):
    """A model seen through crossdiff's eyes: sites, capture, logits, and the MoE view."""

    model: torch.nn.Module
    tokenizer: Any = None
    """The model's tokenizer (a Hugging Face tokenizer), or None if it was not given."""

    @abstractmethod
    def sites(self) -> list[Site]:
        """Every capturable site, in forward order."""

    def site(self, name: str) -> Site:
        """The site with common or native ``name``; the error lists the valid names."""
        for site in self.sites():
            if name in (site.name, site.native):
                return site
        raise unknown_choice("site", name, self.site_names())

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of rows of the model's token embedding."""

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` if an integer ``[B, P]`` tensor of ids below ``vocab_size``, else raise."""
        import torch

        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            described = (
                f"a {tokens.dim()}-d {tokens.dtype} tensor"
                if isinstance(tokens, torch.Tensor)
                else type(tokens).__name__
            )
            raise ConfigError(f"tokens must be an integer [batch, pos] tensor, got {described}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ConfigError(
                f"token ids must lie in 0..{self.vocab_size - 1} (the model's embedding), got "
                f"{int(tokens.min())}..{int(tokens.max())}"
            )
        return tokens

    def sites_named(self, names: Sequence[str]) -> list[Site]:
        """The sites called ``names`` (common or native); at least one, all known."""
        if not names:
            raise ConfigError("no sites requested; valid sites: " + ", ".join(self.site_names()))
        return [self.site(name) for name in names]

    def site_names(self) -> list[str]:
        """Common names of every site, in forward order."""
        return [site.name for site in self.sites()]

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

    def n_experts(self, layer: int) -> int:
        """``E``: routed experts in MoE ``layer``."""
        self.require_moe(layer)
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")

    def top_k(self, layer: int) -> int:
        """``K``: experts chosen per token in MoE ``layer``."""
        self.require_moe(layer)
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")

    def expert_parameters(self, layer: int) -> int:
        """Parameters of all ``E`` routed experts of MoE ``layer`` together (not the router,
        not shared experts): what active-parameter counts leave (E − K)/E of out."""
        self.require_moe(layer)
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")

    def require_moe(self, layer: int) -> None:
        """Raise a :class:`ConfigError` unless ``layer`` is an MoE layer."""
        if layer not in self.moe_layers():
            raise ConfigError(
                f"layer {layer} is not an MoE layer of this model; MoE layers: {self.moe_layers()}"
            )

    def routed_layers(self, layers: Sequence[int] | None) -> list[int]:
        """``layers`` (all MoE layers if None), checked: at least one, each an MoE layer."""
        chosen = self.moe_layers() if layers is None else list(layers)
        if not chosen:
            raise ConfigError(
                f"no MoE layers to route: {type(self.model).__name__} has none"
                if layers is None
                else f"an empty layer list was given; MoE layers: {self.moe_layers()}"
            )
        for layer in chosen:
            self.require_moe(layer)
        return chosen

    def check_expert(self, layer: int, expert: int | None) -> None:
        """Raise a :class:`ConfigError` unless ``expert`` is None or an expert of ``layer``."""
        if expert is None:
            return
        n = self.n_experts(layer)
        if isinstance(expert, bool) or not isinstance(expert, int) or not 0 <= expert < n:
            raise ConfigError(
                f"ablate_expert={expert!r} is out of range: layer {layer} has {n} experts "
                f"(0..{n - 1})"
            )

    def routing(
        self, tokens: torch.Tensor, layers: Sequence[int] | None = None
    ) -> dict[int, Routing]:
        """``tokens [B, P]`` -> ``{layer: Routing}`` for ``layers`` (all MoE layers if None)."""
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")

    def expert_outputs(self, tokens: torch.Tensor, layer: int) -> ExpertOutputs:
        """Open MoE ``layer`` for ``tokens [B, P]``: routing and each chosen expert's output."""
        self.require_moe(layer)
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")

    def forward_restricted(
        self,
        tokens: torch.Tensor,
        layer: int | None = None,
        keep_top_n: int | None = None,
        ablate_expert: int | None = None,
        renormalise: bool = False,
    ) -> RestrictedForward:
        """Forward ``tokens [B, P]`` with routing restricted in ``layer`` (every MoE layer if None).

        ``keep_top_n`` keeps the n largest-weight of the K chosen experts; ``ablate_expert`` zeroes
        that expert's weight wherever it was chosen. Weights are not renormalised unless
        ``renormalise`` (kept weights then sum to what the K weights summed to).
        """
        raise NotImplementedError(f"{type(self).__name__} has no MoE view")

    def restriction_layers(self, layer: int | None, ablate_expert: int | None = None) -> list[int]:
        """The MoE layers a restricted forward touches: ``[layer]`` (checked) or all of them.

        Raises if there are none, or if ``ablate_expert`` is not an expert of each of them.
        """
        layers = self.routed_layers(None if layer is None else [layer])
        for index in layers:
            self.check_expert(index, ablate_expert)
        return layers


def restrict_weights(
    weights: torch.Tensor,
    indices: torch.Tensor,
    keep_top_n: int | None,
    ablate_expert: int | None,
    renormalise: bool,
) -> torch.Tensor:
    """``weights, indices [T, K]`` (any slot order) -> the restricted ``[T, K]`` weights.

    Slots outside the ``keep_top_n`` largest weights, and slots choosing ``ablate_expert``, get
    weight 0; with ``renormalise`` the kept weights are rescaled to the original row sums.
    """
    import torch

    keep = torch.ones_like(weights, dtype=torch.bool)
    if keep_top_n is not None:
        if not 1 <= keep_top_n <= weights.shape[-1]:
            raise ConfigError(f"keep_top_n must be in 1..{weights.shape[-1]}, got {keep_top_n}")
        order = weights.argsort(dim=-1, descending=True, stable=True)
        rank = order.argsort(dim=-1)
        keep &= rank < keep_top_n
    if ablate_expert is not None:
        keep &= indices != ablate_expert
    restricted = torch.where(keep, weights, torch.zeros_like(weights))
    if renormalise:
        kept_sum = restricted.sum(-1, keepdim=True)
        scale = weights.sum(-1, keepdim=True) / kept_sum.where(kept_sum != 0, 1)
        restricted = restricted * scale
    return restricted


def sort_routing(
    router_logits: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    router_input: torch.Tensor | None = None,
) -> Routing:
    """A :class:`Routing` with the ``[T, K]`` slots sorted by weight, largest first (stable)."""
    order = weights.argsort(dim=-1, descending=True, stable=True)
    return Routing(
        router_logits, indices.gather(-1, order), weights.gather(-1, order), router_input
    )


class AdapterFactory(Protocol):
    """What ``crossdiff_model_adapters`` returns: something that can wrap certain models."""

    name: str
    description: str

    def can_adapt(self, model: object) -> bool:
        """True if this factory handles ``model``."""
        ...

    def __call__(self, model: object, tokenizer: Any = None) -> ModelAdapter:
        """Wrap ``model`` (with its ``tokenizer``, if known)."""
        ...


@dataclass
class LoadedModel:
    """A model and its tokenizer (None if the model has none), as a loader returns them."""

    model: Any
    tokenizer: Any = None


class ModelLoader(Protocol):
    """What ``crossdiff_model_loaders`` returns: something that loads models by name or path."""

    name: str
    description: str

    def can_load(self, name_or_path: str) -> bool:
        """True if this loader recognises ``name_or_path`` (a local path or a hub name)."""
        ...

    def load(self, name_or_path: str) -> LoadedModel:
        """Load the model (and tokenizer) at ``name_or_path``."""
        ...


def adapt(model: object, manager: CrossdiffPluginManager, tokenizer: Any = None) -> ModelAdapter:
    """Wrap ``model`` with the first adapter (newest plugin first) that can adapt it."""
    factories = collect(manager.hook.crossdiff_model_adapters())
    for factory in factories:
        if factory.can_adapt(model):
            return factory(model, tokenizer)
    names = ", ".join(f.name for f in factories) or "(none installed)"
    raise ConfigError(f"no adapter handles a {type(model).__name__}; adapters tried: {names}")


def load_adapter(
    name_or_path: str, manager: CrossdiffPluginManager, device: str | None = None
) -> ModelAdapter:
    """Load ``name_or_path`` with the first loader that recognises it, move it to ``device``
    (``auto``: CUDA where present; None: where the loader put it), then :func:`adapt` it."""
    loaders = collect(manager.hook.crossdiff_model_loaders())
    for loader in loaders:
        if loader.can_load(name_or_path):
            loaded = loader.load(name_or_path)
            model = loaded.model
            if device is not None:
                from crossdiff.runtime import resolve_device

                model = model.to(resolve_device(device))
            return adapt(model, manager, loaded.tokenizer)
    names = ", ".join(f.name for f in loaders) or "(none installed)"
    raise ConfigError(f"no model loader recognises {name_or_path!r}; loaders tried: {names}")


# ---------------------------------------------------------------- tokenizers


def vocabulary(adapter: ModelAdapter) -> dict[str, int] | None:
    """The adapter's token -> id map, or None if it has no tokenizer."""
    tokenizer = adapter.tokenizer
    if tokenizer is None:
        return None
    return dict(tokenizer.get_vocab())


def check_same_tokenizer(
    adapters: Mapping[str, ModelAdapter], alignment: object | None = None
) -> None:
    """Raise a :class:`ConfigError` unless every model reads token ids the same way.

    Models agree if their tokenizers have identical vocabularies, or, where a tokenizer is
    missing, identical embedding sizes. An ``alignment`` (a map between vocabularies) waives
    the check; what it must be is up to the caller.
    """
    if alignment is not None or len(adapters) < 2:
        return
    items = list(adapters.items())
    first_name, first = items[0]
    first_vocab = vocabulary(first)
    for name, adapter in items[1:]:
        vocab = vocabulary(adapter)
        if first_vocab is not None and vocab is not None:
            if vocab != first_vocab:
                differing = sorted(set(vocab.items()) ^ set(first_vocab.items()))[:3]
                raise ConfigError(
                    f"models {first_name!r} and {name!r} have different tokenizers "
                    f"({len(first_vocab)} vs {len(vocab)} tokens; e.g. {differing}); "
                    "use one tokenizer for all models or give a token alignment"
                )
        elif adapter.vocab_size != first.vocab_size:
            raise ConfigError(
                f"models {first_name!r} and {name!r} have different vocabulary sizes "
                f"({first.vocab_size} vs {adapter.vocab_size}); they cannot share token ids "
                "unless a token alignment is given"
            )
