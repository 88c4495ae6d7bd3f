"""A ``HookedTransformer`` seen through the adapter contract.

Common site names map to TransformerLens hook names: ``L.resid_pre`` -> ``blocks.L.hook_resid_pre``,
likewise ``attn_out``, ``resid_mid``, ``mlp_out``, ``resid_post`` (where the model has the hook).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformer_lens import HookedTransformer

from crossdiff.adapters import ExpertOutputs, ModelAdapter, RestrictedForward, Routing, Site
from crossdiff_tl import moe

SITE_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
"""Common site kinds in forward order within a block."""


class TransformerLensAdapter(ModelAdapter):
    """Sites, capture, logits and (for native MoE blocks) the MoE view of a HookedTransformer."""

    def __init__(self, model: HookedTransformer, tokenizer: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self._sites = self._find_sites()

    def _find_sites(self) -> list[Site]:
        hooks = self.model.hook_dict
        d_model = self.model.cfg.d_model
        return [
            Site(f"{layer}.{kind}", f"blocks.{layer}.hook_{kind}", layer, d_model)
            for layer in range(self.model.cfg.n_layers)
            for kind in SITE_KINDS
            if f"blocks.{layer}.hook_{kind}" in hooks
        ]

    def sites(self) -> list[Site]:
        """Every block's residual, attention and MLP sites, in forward order."""
        return list(self._sites)

    @property
    def vocab_size(self) -> int:
        """``d_vocab``."""
        return self.model.cfg.d_vocab

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.check_tokens(tokens).to(self.model.cfg.device)

    def capture(self, tokens: torch.Tensor, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """``tokens [B, P]`` -> ``{site.name: [B, P, D]}``; runs blocks up to the last needed."""
        wanted = self.sites_named(sites)
        tokens = self._tokens(tokens)
        by_native = {site.native: site.name for site in wanted}
        captured: dict[str, torch.Tensor] = {}

        def keep(activation: torch.Tensor, hook: Any) -> None:
            captured[by_native[hook.name]] = activation

        hooks = [(native, keep) for native in by_native]
        stop = max(site.layer for site in wanted) + 1
        with torch.no_grad():
            self.model.run_with_hooks(tokens, return_type=None, stop_at_layer=stop, fwd_hooks=hooks)
        return captured

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, P]`` -> ``[B, P, V]``."""
        with torch.no_grad():
            return self.model(self._tokens(tokens), return_type="logits")

    def logits_with_replacement(
        self, tokens: torch.Tensor, site: str, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits with the activation at ``site`` replaced by ``replace(activation)``."""
        native = self.site(site).native
        with torch.no_grad():
            return self.model.run_with_hooks(
                self._tokens(tokens),
                return_type="logits",
                fwd_hooks=[(native, lambda activation, hook: replace(activation))],
            )

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., V]``: ``ln_final`` (if any), then the unembedding."""
        flat = hidden.reshape(-1, 1, hidden.shape[-1])  # [N, 1, D]
        with torch.no_grad():
            norm = getattr(self.model, "ln_final", None)
            if norm is not None:
                flat = norm(flat)
            logits = self.model.unembed(flat)  # [N, 1, V]
        return logits.reshape(*hidden.shape[:-1], logits.shape[-1])

    # -------------------------------------------------------------- MoE view

    def moe_layers(self) -> list[int]:
        """Blocks whose MLP is TransformerLens' native ``MoE``."""
        return [i for i, block in enumerate(self.model.blocks) if moe.is_moe(block.mlp)]

    def n_experts(self, layer: int) -> int:
        """``num_experts``."""
        self.require_moe(layer)
        return self.model.blocks[layer].mlp.num_experts

    def top_k(self, layer: int) -> int:
        """``experts_per_token``."""
        self.require_moe(layer)
        return self.model.blocks[layer].mlp.experts_per_token

    def expert_parameters(self, layer: int) -> int:
        """Parameters of the block's ``experts``."""
        self.require_moe(layer)
        return sum(p.numel() for p in self.model.blocks[layer].mlp.experts.parameters())

    def routing(
        self, tokens: torch.Tensor, layers: Sequence[int] | None = None
    ) -> dict[int, Routing]:
        """``{layer: Routing}`` read from the MoE hooks of one forward pass."""
        layers = self.routed_layers(layers)
        seen = moe.observe(self.model, self._tokens(tokens), layers)
        return {layer: seen[layer].routing for layer in layers}

    def expert_outputs(self, tokens: torch.Tensor, layer: int) -> ExpertOutputs:
        """Routing and each chosen expert's unweighted output for MoE ``layer``."""
        self.require_moe(layer)
        return moe.observe(self.model, self._tokens(tokens), [layer])[layer].opened()

    def forward_restricted(
        self,
        tokens: torch.Tensor,
        layer: int | None = None,
        keep_top_n: int | None = None,
        ablate_expert: int | None = None,
        renormalise: bool = False,
    ) -> RestrictedForward:
        """Forward with routing restricted in ``layer`` (all MoE layers if None)."""
        layers = self.restriction_layers(layer, ablate_expert)
        return moe.restricted_forward(
            self.model, self._tokens(tokens), layers, keep_top_n, ablate_expert, renormalise
        )
