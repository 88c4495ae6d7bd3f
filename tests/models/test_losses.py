"""Router losses from the TransformerLens routing hooks, against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossdiff.models.build import build_model
from crossdiff.models.config import ModelConfig
from crossdiff.models.losses import (
    auxiliary_losses,
    load_balancing_loss,
    record_routing,
    router_z_loss,
)

CONFIG = ModelConfig(
    arch="moe",
    n_layers=2,
    d_model=32,
    n_heads=2,
    d_mlp=32,
    num_experts=4,
    experts_per_token=2,
    vocab_size=50,
    n_ctx=8,
    seed=3,
)


def test_hand_worked_values() -> None:
    uniform = torch.full((6, 4), 0.25)
    spread = torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]])
    assert load_balancing_loss(uniform, spread, 4).item() == pytest.approx(1.0)
    # Everything on expert 0 with certainty: f = P = e_0, loss = E.
    collapsed = torch.zeros(5, 4)
    collapsed[:, 0] = 1
    assert load_balancing_loss(collapsed, torch.zeros(5, 1, dtype=torch.long), 4).item() == 4.0
    # z-loss of zero logits: logsumexp = log E.
    assert router_z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)


def _reference(x: np.ndarray, w_gate: np.ndarray, k: int) -> tuple[float, float]:
    """Float64 load-balancing and z-loss of one layer from its MLP input and router weight."""
    logits = x @ w_gate.T  # [tokens, E]
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    n_tokens, n_experts = probs.shape
    counts = np.zeros(n_experts)
    for row in probs:
        for e in np.argsort(-row)[:k]:
            counts[e] += 1
    f = counts / (n_tokens * k)
    balance = n_experts * float((f * probs.mean(axis=0)).sum())
    lse = logits.max(axis=1) + np.log(np.exp(shifted).sum(axis=1))
    return balance, float((lse**2).mean())


def test_losses_from_hooks_match_float64_reference() -> None:
    model = build_model(CONFIG)
    tokens = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(0))
    names = [f"blocks.{i}.ln2.hook_normalized" for i in range(CONFIG.n_layers)]
    with record_routing(model, logits=True) as record:
        _, cache = model.run_with_cache(tokens, names_filter=names)
    assert len(record.probs) == len(record.indices) == len(record.logits) == CONFIG.n_layers
    balances, zs = [], []
    for layer in range(CONFIG.n_layers):
        x = cache[names[layer]].reshape(-1, CONFIG.d_model).double().numpy()
        w = model.blocks[layer].mlp.W_gate.weight.detach().double().numpy()
        ref_balance, ref_z = _reference(x, w, CONFIG.experts_per_token)
        got = load_balancing_loss(record.probs[layer], record.indices[layer], 4).item()
        assert got == pytest.approx(ref_balance, rel=1e-5)
        assert router_z_loss(record.logits[layer]).item() == pytest.approx(ref_z, rel=1e-5)
        balances.append(ref_balance)
        zs.append(ref_z)
    balance, z = auxiliary_losses(record, CONFIG.num_experts)
    assert balance.item() == pytest.approx(np.sum(balances), rel=1e-5)  # summed over layers
    assert z.item() == pytest.approx(np.sum(zs), rel=1e-5)


def test_losses_train_the_router_and_hooks_are_removed() -> None:
    model = build_model(CONFIG)
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    with record_routing(model, logits=True) as record:
        model(tokens)
    balance, z = auxiliary_losses(record, CONFIG.num_experts)
    (balance + z).backward()
    for block in model.blocks:
        assert block.mlp.W_gate.weight.grad is not None
        assert block.mlp.W_gate.weight.grad.abs().sum() > 0
    model(tokens)  # after the context, nothing is recorded any more
    assert len(record.probs) == CONFIG.n_layers


def test_global_counts_make_shards_add_up() -> None:
    """With counts summed over shards, the mean of per-shard losses equals the whole batch's."""
    gen = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(8, 4, generator=gen, dtype=torch.float64), dim=-1)
    indices = probs.topk(2, dim=-1).indices
    whole = load_balancing_loss(probs, indices, 4)
    total = torch.bincount(indices.reshape(-1), minlength=4).double()
    halves = [
        load_balancing_loss(probs[s], indices[s], 4, reduce_counts=lambda _c: total)
        for s in (slice(0, 4), slice(4, 8))
    ]
    assert (sum(halves) / 2).item() == pytest.approx(whole.item(), rel=1e-12)
