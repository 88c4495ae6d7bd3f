"""The MoE view of TransformerLens' native ``MoE`` block.

The block computes ``p = softmax(W_gate x)`` over all ``E`` experts (``hook_expert_weights``), takes
the top ``K`` of ``p`` (``hook_expert_indices``), renormalises them iff ``cfg.norm_topk_prob``, and
returns ``Σ_k w_k · expert_k(x)``. It has no router-logit hook and no shared experts: the router
logits are ``W_gate x`` recomputed from the block's own input, the weights are ``p`` gathered at the
chosen experts (renormalised as the block does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from crossdiff.adapters import (
    ExpertOutputs,
    RestrictedForward,
    Routing,
    restrict_weights,
    sort_routing,
)


def is_moe(mlp: torch.nn.Module) -> bool:
    """True if ``mlp`` is TransformerLens' native MoE block (experts + ``W_gate`` + hooks)."""
    return hasattr(mlp, "experts") and hasattr(mlp, "hook_expert_indices")


def used_weights(mlp: torch.nn.Module, probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``probs [T, E]``, ``indices [T, K]`` -> the ``[T, K]`` weights the block multiplies by."""
    weights = probs.gather(1, indices)
    if mlp.cfg.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights


def unweighted_expert_outputs(
    mlp: torch.nn.Module, x: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """``x [T, D]``, ``indices [T, K]`` -> ``[T, K, D]`` each chosen expert's output."""
    out = x.new_zeros(*indices.shape, x.shape[-1])
    for expert in indices.unique().tolist():
        tok, slot = torch.where(indices == expert)
        out[tok, slot] = mlp.experts[expert](x[tok])
    return out


def weighted_sum(
    mlp: torch.nn.Module, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``[T, D]`` Σ_k weights[:, k] · expert_{indices[:, k]}(x), accumulated as the block does."""
    out = torch.zeros_like(x)
    for expert in indices.unique().tolist():
        tok, slot = torch.where(indices == expert)
        contribution = mlp.experts[expert](x[tok]) * weights[tok, slot, None].to(x.dtype)
        out.index_add_(0, tok, contribution)
    return out


@dataclass
class Observed:
    """One MoE block seen during a forward pass (``T`` = B·P tokens)."""

    mlp: torch.nn.Module
    block_input: torch.Tensor  # [T, D]
    probs: torch.Tensor  # [T, E] softmax over all experts
    indices: torch.Tensor  # [T, K] in the block's order
    block_output: torch.Tensor  # [T, D]

    @property
    def routing(self) -> Routing:
        """The routing as the block used it, slots sorted by weight."""
        with torch.no_grad():
            logits = self.mlp.W_gate(self.block_input)
        weights = used_weights(self.mlp, self.probs, self.indices)
        return sort_routing(logits, self.indices, weights, self.block_input)

    def opened(self) -> ExpertOutputs:
        """The full :class:`ExpertOutputs` record (recomputes each chosen expert)."""
        routing = self.routing
        with torch.no_grad():
            experts = unweighted_expert_outputs(self.mlp, self.block_input, routing.topk_indices)
        return ExpertOutputs(self.block_input, routing, experts, None, self.block_output)


BlockHook = Callable[[int, torch.nn.Module, torch.Tensor, dict], torch.Tensor | None]
"""``(layer, mlp, x [T, D], seen) -> new block output [T, D]`` or None to keep the model's."""


@contextmanager
def _watching(
    model: torch.nn.Module, layers: Sequence[int], on_output: BlockHook
) -> Iterator[dict[int, dict]]:
    """While active, record each listed block's probabilities and indices, then ``on_output``."""
    seen: dict[int, dict] = {layer: {} for layer in layers}

    def record(layer: int, key: str):
        def hook(module, args, output):
            seen[layer][key] = output

        return hook

    def block(layer: int):
        def hook(mlp, args, output):
            x = args[0].reshape(-1, args[0].shape[-1])  # [T, D]
            seen[layer]["input"] = x
            new = on_output(layer, mlp, x, seen[layer])
            seen[layer]["output"] = output.reshape(x.shape) if new is None else new
            return None if new is None else new.reshape(output.shape)

        return hook

    handles = []
    try:
        for layer in layers:
            mlp = model.blocks[layer].mlp
            handles.append(mlp.hook_expert_weights.register_forward_hook(record(layer, "probs")))
            handles.append(mlp.hook_expert_indices.register_forward_hook(record(layer, "indices")))
            handles.append(mlp.register_forward_hook(block(layer)))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def observe(
    model: torch.nn.Module, tokens: torch.Tensor, layers: Sequence[int]
) -> dict[int, Observed]:
    """Run ``tokens [B, P]`` up to the last of ``layers`` and record those MoE blocks."""
    with torch.no_grad(), _watching(model, layers, lambda *_: None) as seen:
        model(tokens, return_type=None, stop_at_layer=max(layers) + 1)
    return {
        layer: Observed(model.blocks[layer].mlp, s["input"], s["probs"], s["indices"], s["output"])
        for layer, s in seen.items()
    }


def restricted_forward(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    layers: Sequence[int],
    keep_top_n: int | None,
    ablate_expert: int | None,
    renormalise: bool,
) -> RestrictedForward:
    """Logits and block outputs with each listed block's output recomputed from restricted weights.

    Each block still routes as the model does (on its possibly changed input); only the weights
    of the chosen experts are restricted before the weighted sum.
    """

    def restrict(layer: int, mlp: torch.nn.Module, x: torch.Tensor, seen: dict) -> torch.Tensor:
        indices = seen["indices"]
        weights = used_weights(mlp, seen["probs"], indices)
        weights = restrict_weights(weights, indices, keep_top_n, ablate_expert, renormalise)
        return weighted_sum(mlp, x, indices, weights)

    with torch.no_grad(), _watching(model, layers, restrict) as seen:
        logits = model(tokens, return_type="logits")
    return RestrictedForward(logits, {layer: seen[layer]["output"] for layer in layers})
