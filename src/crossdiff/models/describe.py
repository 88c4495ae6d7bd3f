"""What a model loaded by path is: architecture, parameters (total and active), held-out loss.

The in-repo models record these when they are trained; a model given by path (a Hugging Face
model saved with ``save_pretrained``, say) is described through its adapter instead, so the
report compares both kinds alike. Active parameters leave out, in every MoE layer of the
adapter's MoE view, the (E − K)/E share of the routed experts a token does not use (experts of
equal size; the router and shared experts count in full).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter

EVAL_SEQUENCES_PER_DOMAIN = 32
"""Held-out sequences per domain the loss of a model given by path is measured on."""


def architecture(adapter: ModelAdapter) -> str:
    """The model's class, with its Hugging Face ``model_type`` where it has one."""
    model = adapter.model
    kind = getattr(getattr(model, "config", None), "model_type", None)
    name = type(model).__name__
    return f"{name} ({kind})" if isinstance(kind, str) else name


def parameter_counts(adapter: ModelAdapter) -> dict[str, int]:
    """``{"total_params", "active_params"}``: every parameter, and those one token uses."""
    total = sum(p.numel() for p in adapter.model.parameters())
    inactive = 0
    for layer in adapter.moe_layers():
        n_experts, k = adapter.n_experts(layer), adapter.top_k(layer)
        inactive += adapter.expert_parameters(layer) * (n_experts - k) // n_experts
    return {"total_params": total, "active_params": total - inactive}


@torch.no_grad()
def heldout_loss(
    adapter: ModelAdapter, sets: dict[str, np.ndarray], batch_size: int = 8
) -> tuple[dict[str, float], dict[str, int]]:
    """``(loss, tokens)`` per domain: mean next-token cross-entropy (nats, float64 sums) of
    ``adapter``'s logits on each domain's sequences ``[n, P]``, and the tokens predicted."""
    losses, counts = {}, {}
    for domain, rows in sets.items():
        total, n = 0.0, 0
        for start in range(0, len(rows), batch_size):
            tokens = torch.as_tensor(np.asarray(rows[start : start + batch_size]), dtype=torch.long)
            logits = adapter.logits(tokens)[:, :-1].double()
            targets = tokens[:, 1:].to(logits.device)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
                )
            )
            n += targets.numel()
        losses[domain], counts[domain] = total / max(n, 1), n
    return losses, counts


def describe_model(adapter: ModelAdapter, sets: dict[str, np.ndarray]) -> dict[str, Any]:
    """The report's fields of a model given by path: ``arch`` (``moe`` where the adapter sees
    MoE layers, else ``dense``, as for the in-repo models), ``architecture`` (its class),
    parameters, held-out loss per domain (``tokens_seen``, its training tokens, is not known)."""
    from crossdiff.corpus.stats import unigram_entropy

    loss, tokens = heldout_loss(adapter, sets)
    return {
        "arch": "moe" if adapter.moe_layers() else "dense",
        "architecture": architecture(adapter),
        **parameter_counts(adapter),
        "tokens_seen": None,
        "val_loss": loss,
        "val_tokens": tokens,
        "unigram_entropy": {
            domain: unigram_entropy(np.asarray(rows)[:, 1:], adapter.vocab_size)
            for domain, rows in sets.items()
        },
    }
