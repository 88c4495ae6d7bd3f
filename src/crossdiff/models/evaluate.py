"""Per-domain validation loss and per-layer expert usage of a model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdiff.models.losses import moe_layers, record_routing

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class Evaluation:
    """Validation results."""

    val_loss: dict[str, float]
    """Mean next-token cross-entropy (nats) per domain."""
    tokens: dict[str, int]
    """Predicted tokens per domain."""
    expert_usage: dict[str, list[float]] = field(default_factory=dict)
    """Per MoE layer (``"0"``, ``"1"``, ...): each expert's share of the routing assignments
    (count of (token, slot) pairs routed to it / (tokens × k)); sums to 1; uniform is 1/E.
    Counted over all domains' validation tokens. Empty for a dense model."""

    def min_expert_share(self) -> float | None:
        """The smallest expert share over all layers (None for a dense model)."""
        shares = [s for layer in self.expert_usage.values() for s in layer]
        return min(shares) if shares else None


def evaluate(
    model: HookedTransformer,
    sets: dict[str, np.ndarray],
    batch_size: int = 32,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Evaluation:
    """Evaluate ``model`` on each domain's sequences ``[n, ctx]`` without gradients.

    ``autocast`` makes a fresh mixed-precision context per batch (None: full precision).
    """
    import torch

    device = next(model.parameters()).device
    layers = moe_layers(model)
    num_experts = model.cfg.num_experts or 0
    counts = np.zeros((len(layers), num_experts), dtype=np.int64)
    losses, tokens = {}, {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_routing(model) as record:
            for domain, rows in sets.items():
                total, n = 0.0, 0
                for start in range(0, len(rows), batch_size):
                    batch = torch.as_tensor(rows[start : start + batch_size], dtype=torch.long)
                    record.clear()
                    with autocast() if autocast else nullcontext():
                        # [batch, pos - 1]
                        per_token = model(batch.to(device), return_type="loss", loss_per_token=True)
                    total += per_token.double().sum().item()
                    n += per_token.numel()
                    for slot, indices in enumerate(record.indices):
                        counts[slot] += np.bincount(
                            indices.reshape(-1).cpu().numpy(), minlength=num_experts
                        )
                losses[domain], tokens[domain] = total / max(n, 1), n
    finally:
        model.train(was_training)
    usage = {
        str(layer): (counts[slot] / max(counts[slot].sum(), 1)).round(6).tolist()
        for slot, layer in enumerate(layers)
    }
    return Evaluation(val_loss=losses, tokens=tokens, expert_usage=usage)
