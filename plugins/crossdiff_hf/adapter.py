"""A Hugging Face causal LM seen through the adapter contract, via nnsight.

Sites per decoder layer ``L`` (native names are module paths, e.g. for Llama-style models):

- ``L.resid_pre``  = input of ``model.layers.L``      (native ``model.layers.L.input``)
- ``L.attn_out``   = output of ``model.layers.L.self_attn`` (first element)
- ``L.mlp_out``    = output of ``model.layers.L.mlp`` (the MoE block's output, shared included)
- ``L.resid_post`` = output of ``model.layers.L``

nnsight requires modules to be read in execution order, so every trace below walks layers in
order and, inside a layer, follows the order of :data:`SITE_KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from nnsight import NNsight

from crossdiff.adapters import (
    ExpertOutputs,
    ModelAdapter,
    RestrictedForward,
    Routing,
    Site,
    restrict_weights,
    sort_routing,
)
from crossdiff.errors import ConfigError
from crossdiff_hf.blocks import MoEBlockView, find_view, looks_like_moe
from crossdiff_hf.blocks.base import PLUGIN_DOCS, has_parameters
from crossdiff_hf.layout import ATTENTION_NAMES, find_layout, submodule

SITE_KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Common site kinds in execution order within a decoder layer."""


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, new: torch.Tensor) -> Any:
    return (new, *value[1:]) if isinstance(value, tuple) else new


RECONSTRUCTION_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
"""Largest relative error of Σ w·expert + shared vs the block's output (2e-2 in half precision)."""


def check_siblings(layer: torch.nn.Module, path: str, mlp_name: str) -> None:
    """Refuse a decoder layer with an always-on MLP or experts beside its MLP child."""
    for name, child in layer.named_children():
        if name == mlp_name or not has_parameters(child):
            continue
        if "shared" in name or (looks_like_moe(child) and name not in ATTENTION_NAMES):
            raise ConfigError(
                f"decoder layer {path} has {name!r} ({type(child).__name__}) beside its "
                f"{mlp_name!r} block; the MoE view reads one block per layer and would leave "
                f"{path}.{name}'s output out: refusing the model ({PLUGIN_DOCS})"
            )


def check_reconstruction(opened: ExpertOutputs, view: MoEBlockView) -> None:
    """Raise if Σ_k w_k·expert_k + shared does not give the block's output: a misread block."""
    rebuilt = opened.contribution()
    if opened.shared_output is not None:
        rebuilt = rebuilt + opened.shared_output
    error = float((rebuilt - opened.block_output).double().norm())
    scale = float(opened.block_output.double().norm())
    tolerance = RECONSTRUCTION_TOLERANCE.get(opened.block_output.dtype, 2e-2)
    if error > tolerance * max(scale, 1e-12):
        raise ConfigError(
            f"MoE block {view.path} ({type(view.mlp).__name__}): the weighted expert outputs "
            f"plus the shared part miss the block's output by {error:.3g} (of {scale:.3g}); "
            f"its layout is not what {type(view).__name__} reads ({PLUGIN_DOCS})"
        )


class HuggingFaceAdapter(ModelAdapter):
    """Sites, capture, logits and the MoE view of a transformers causal LM (put in eval mode)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layout = find_layout(model)
        self.traced = NNsight(model)
        layers = submodule(model, self.layout.layers)
        self._views: dict[int, MoEBlockView] = {}
        for index, layer in enumerate(layers):
            path = self.layout.layer(index)
            check_siblings(layer, path, self.layout.mlp)
            view = find_view(getattr(layer, self.layout.mlp), f"{path}.{self.layout.mlp}")
            if view is not None:
                self._views[index] = view
        d_model = model.get_input_embeddings().embedding_dim
        self._sites = [
            Site(f"{index}.{kind}", self._native(index, kind), index, d_model)
            for index in range(len(layers))
            for kind in SITE_KINDS
        ]

    def _native(self, layer: int, kind: str) -> str:
        path = self.layout.layer(layer)
        return {
            "resid_pre": f"{path}.input",
            "attn_out": f"{path}.{self.layout.attention}",
            "mlp_out": f"{path}.{self.layout.mlp}",
            "resid_post": path,
        }[kind]

    def sites(self) -> list[Site]:
        """Each decoder layer's ``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``."""
        return list(self._sites)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding."""
        return self.model.get_input_embeddings().num_embeddings

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.check_tokens(tokens).to(self.model.device)

    # ------------------------------------------------------------ reading sites in a trace

    def _read(self, site: Site) -> torch.Tensor:
        """Inside a trace: the activation at ``site`` (``[B, P, D]``)."""
        layer = submodule(self.traced, self.layout.layer(site.layer))
        kind = site.name.split(".", 1)[1]
        if kind == "resid_pre":
            return layer.input
        if kind == "attn_out":
            return _first(getattr(layer, self.layout.attention).output)
        if kind == "mlp_out":
            return _first(getattr(layer, self.layout.mlp).output)
        return _first(layer.output)

    def _write(self, site: Site, replace: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Inside a trace: replace the activation at ``site`` by ``replace(activation)``."""
        layer = submodule(self.traced, self.layout.layer(site.layer))
        kind = site.name.split(".", 1)[1]
        if kind == "resid_pre":
            args, kwargs = layer.inputs
            layer.inputs = ((replace(args[0]), *args[1:]), kwargs)
            return
        if kind == "resid_post":
            module = layer
        else:
            name = self.layout.attention if kind == "attn_out" else self.layout.mlp
            module = getattr(layer, name)
        output = module.output
        module.output = _replace_first(output, replace(_first(output)))

    @staticmethod
    def _order(site: Site) -> tuple[int, int]:
        return site.layer, SITE_KINDS.index(site.name.split(".", 1)[1])

    def capture(self, tokens: torch.Tensor, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """``tokens [B, P]`` -> ``{site.name: [B, P, D]}``; stops after the last layer needed."""
        wanted = sorted(set(self.sites_named(sites)), key=self._order)
        tokens = self._tokens(tokens)
        captured: dict[str, torch.Tensor] = {}
        with torch.no_grad(), self.traced.trace(tokens) as tracer:
            for site in wanted:
                captured[site.name] = self._read(site).save()
            tracer.stop()
        return captured

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, P]`` -> ``[B, P, V]``."""
        with torch.no_grad():
            return self.model(self._tokens(tokens)).logits

    def logits_with_replacement(
        self, tokens: torch.Tensor, site: str, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits with the activation at ``site`` replaced by ``replace(activation)``."""
        chosen = self.site(site)
        with torch.no_grad(), self.traced.trace(self._tokens(tokens)):
            self._write(chosen, replace)
            output = self.traced.output.save()
        return output.logits

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., V]``: the final norm, then the output embedding."""
        norm = submodule(self.model, self.layout.final_norm)
        with torch.no_grad():
            return self.model.get_output_embeddings()(norm(hidden))

    # -------------------------------------------------------------- MoE view

    def moe_layers(self) -> list[int]:
        """Layers whose MLP is a known MoE block (see :mod:`crossdiff_hf.blocks`)."""
        return sorted(self._views)

    def n_experts(self, layer: int) -> int:
        """Routed experts of MoE ``layer``."""
        self.require_moe(layer)
        return self._views[layer].n_experts

    def top_k(self, layer: int) -> int:
        """Experts chosen per token in MoE ``layer``."""
        self.require_moe(layer)
        return self._views[layer].top_k

    def expert_parameters(self, layer: int) -> int:
        """Parameters of the block's routed ``experts`` (fused or one module per expert)."""
        self.require_moe(layer)
        return sum(p.numel() for p in self._views[layer].mlp.experts.parameters())

    def _mlp(self, layer: int) -> Any:
        return getattr(submodule(self.traced, self.layout.layer(layer)), self.layout.mlp)

    def _observe(self, tokens: torch.Tensor, layers: Sequence[int], outputs: bool) -> dict:
        """One trace, stopped after the last of ``layers``: block input, gate output (+ output)."""
        seen: dict[int, dict[str, Any]] = {}
        with torch.no_grad(), self.traced.trace(self._tokens(tokens)) as tracer:
            for layer in sorted(layers):
                mlp = self._mlp(layer)
                router = getattr(mlp, self._views[layer].router_name)
                seen[layer] = {"input": mlp.input.save(), "gate": router.output.save()}
                if outputs:
                    seen[layer]["output"] = mlp.output.save()
            tracer.stop()
        return seen

    def _routing(self, layer: int, seen: dict[str, Any]) -> Routing:
        view = self._views[layer]
        x = seen["input"].reshape(-1, seen["input"].shape[-1])  # [T, D]
        indices, weights = view.chosen(seen["gate"])
        with torch.no_grad():
            logits = view.router_logits(seen["gate"], x)
        return sort_routing(logits, indices, weights, x)

    def routing(
        self, tokens: torch.Tensor, layers: Sequence[int] | None = None
    ) -> dict[int, Routing]:
        """``{layer: Routing}`` read from each gate's output in one forward pass."""
        layers = self.routed_layers(layers)
        seen = self._observe(tokens, layers, outputs=False)
        return {layer: self._routing(layer, seen[layer]) for layer in layers}

    def expert_outputs(self, tokens: torch.Tensor, layer: int) -> ExpertOutputs:
        """Routing, each chosen expert's unweighted output and the shared output of ``layer``."""
        self.require_moe(layer)
        seen = self._observe(tokens, [layer], outputs=True)[layer]
        view = self._views[layer]
        x = seen["input"].reshape(-1, seen["input"].shape[-1])  # [T, D]
        routing = self._routing(layer, seen)
        with torch.no_grad():
            experts = view.expert_outputs(x, routing.topk_indices)  # [T, K, D]
            shared = view.shared_output(x)
        block_output = _first(seen["output"]).reshape(x.shape)
        opened = ExpertOutputs(x, routing, experts, shared, block_output)
        check_reconstruction(opened, view)
        return opened

    def forward_restricted(
        self,
        tokens: torch.Tensor,
        layer: int | None = None,
        keep_top_n: int | None = None,
        ablate_expert: int | None = None,
        renormalise: bool = False,
    ) -> RestrictedForward:
        """Forward with each chosen layer's gate output rewritten to the restricted weights."""
        layers = self.restriction_layers(layer, ablate_expert)
        outputs: dict[int, torch.Tensor] = {}
        with torch.no_grad(), self.traced.trace(self._tokens(tokens)):
            for index in layers:
                view, mlp = self._views[index], self._mlp(index)
                router = getattr(mlp, view.router_name)
                gate = router.output
                indices, weights = view.chosen(gate)
                restricted = restrict_weights(
                    weights, indices, keep_top_n, ablate_expert, renormalise
                )
                router.output = view.with_weights(gate, restricted)
                outputs[index] = _first(mlp.output).save()
            result = self.traced.output.save()
        blocks = {index: out.reshape(-1, out.shape[-1]) for index, out in outputs.items()}
        return RestrictedForward(result.logits, blocks)
