"""Router auxiliary losses for TransformerLens MoE models, read from the routing hooks.

Per MoE layer, with T tokens, E experts and top-k routing:

    P_e = (1/T) Σ_t softmax(router_logits_t)_e                  mean router probability
    f_e = (1/(T·k)) Σ_t [e ∈ top-k(t)]                           share of routing assignments
    load_balance = E · Σ_e f_e · P_e                             (= 1 when both are uniform)
    (both losses are summed over the MoE layers)
    z_loss = (1/T) Σ_t logsumexp(router_logits_t)²

f_e is not differentiable (counts); the gradient flows through P_e. ``P`` comes from
``blocks.L.mlp.hook_expert_weights`` (softmax over ALL experts, before top-k) and f from
``blocks.L.mlp.hook_expert_indices``. TransformerLens has no hook on the router logits, which the
z-loss needs: they are taken with a torch forward hook on the router module
``blocks.L.mlp.W_gate`` (an ``nn.Linear`` whose output IS the logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


def load_balancing_loss(
    probs: torch.Tensor,
    indices: torch.Tensor,
    num_experts: int,
    reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Switch load-balancing loss E·Σ_e f_e·P_e of one layer.

    ``probs`` ``[tokens, E]`` router softmax, ``indices`` ``[tokens, k]`` chosen experts.
    ``reduce_counts`` (e.g. a DDP all-reduce sum) turns local assignment counts into global ones,
    so f is the global batch's and the averaged gradients equal a single process's.
    """
    import torch

    dtype = torch.promote_types(probs.dtype, torch.float32)
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).to(dtype)  # [E]
    if reduce_counts is not None:
        counts = reduce_counts(counts)
    f = counts / counts.sum()  # [E]
    p = probs.to(dtype).mean(dim=0)  # [E]
    return num_experts * (f.detach() * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss mean_t logsumexp(logits_t)² of ``logits`` ``[tokens, E]``."""
    import torch

    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.logsumexp(logits.to(dtype), dim=-1).square().mean()


@dataclass
class RouterRecord:
    """What the routing hooks saw in one forward pass, per MoE layer (lists in layer order)."""

    probs: list[torch.Tensor] = field(default_factory=list)
    """``[tokens, E]`` softmax over all experts (hook_expert_weights)."""
    indices: list[torch.Tensor] = field(default_factory=list)
    """``[tokens, k]`` chosen experts (hook_expert_indices)."""
    logits: list[torch.Tensor] = field(default_factory=list)
    """``[tokens, E]`` router logits (forward hook on W_gate), if requested."""

    def clear(self) -> None:
        """Forget the last forward pass."""
        self.probs.clear()
        self.indices.clear()
        self.logits.clear()


def moe_layers(model: HookedTransformer) -> list[int]:
    """Indices of the blocks whose MLP is a mixture of experts."""
    return [i for i, block in enumerate(model.blocks) if hasattr(block.mlp, "experts")]


@contextmanager
def record_routing(model: HookedTransformer, logits: bool = False) -> Iterator[RouterRecord]:
    """Record router probabilities, choices (and optionally logits) of every forward pass.

    The tensors keep their autograd graph, so losses built from them train the router.
    """
    record = RouterRecord()
    handles = []
    for layer in moe_layers(model):
        mlp = model.blocks[layer].mlp
        handles.append(
            mlp.hook_expert_weights.register_forward_hook(
                lambda _m, _i, out: record.probs.append(out)
            )
        )
        handles.append(
            mlp.hook_expert_indices.register_forward_hook(
                lambda _m, _i, out: record.indices.append(out)
            )
        )
        if logits:
            handles.append(
                mlp.W_gate.register_forward_hook(lambda _m, _i, out: record.logits.append(out))
            )
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def auxiliary_losses(
    record: RouterRecord,
    num_experts: int,
    reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Load-balancing and z-loss, each SUMMED over MoE layers as in Switch / ST-MoE (every MoE
    layer adds its own term); None where nothing was recorded."""
    balance = z = None
    if record.probs:
        terms = [
            load_balancing_loss(p, i, num_experts, reduce_counts)
            for p, i in zip(record.probs, record.indices, strict=True)
        ]
        balance = sum(terms)
    if record.logits:
        z = sum(router_z_loss(x) for x in record.logits)
    return balance, z
