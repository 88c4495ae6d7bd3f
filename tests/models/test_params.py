"""Parameter counts of the dense/MoE pair, read from the built modules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crossdiff.models.build import build_model
from crossdiff.models.config import preset
from crossdiff.models.params import count_parameters


def _pair(name: str, vocab: int = 8192, ctx: int = 128):
    dense, _ = preset(name, "dense", vocab, ctx)
    moe = dataclasses.replace(dense, arch="moe")
    with torch.device("meta"):
        return build_model(dense, "meta"), build_model(moe, "meta"), dense


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_active_parameters_agree_within_one_percent(name: str) -> None:
    dense_model, moe_model, _ = _pair(name)
    dense, moe = count_parameters(dense_model), count_parameters(moe_model)
    assert abs(moe.active / dense.active - 1) < 0.01
    assert abs(moe.active_non_embedding / dense.active_non_embedding - 1) < 0.01
    # The MoE really is bigger in total: E/k times the MLP parameters.
    assert moe.total > 1.5 * dense.total


def test_counts_match_an_independent_formula() -> None:
    dense_model, moe_model, c = _pair("tiny", vocab=300, ctx=16)
    dense, moe = count_parameters(dense_model), count_parameters(moe_model)
    d, L, E, k = c.d_model, c.n_layers, c.num_experts, c.experts_per_token
    w = c.d_mlp // k
    assert dense.embedding == moe.embedding == 300 * d * 2 + 300  # W_E, W_U, b_U
    assert moe.router == L * d * E
    assert moe.experts == L * E * 3 * d * w  # gate, in, out; TL experts have no biases
    assert dense.experts == L * (3 * d * c.d_mlp + c.d_mlp + d)  # TL's dense GatedMLP has biases
    assert moe.total - moe.active == L * (E - k) * 3 * d * w
    # Same attention, norms and embeddings: only the MLPs (and the router) differ.
    assert dense.total - dense.experts == moe.total - moe.experts - moe.router
    assert dense.active == dense.total


def test_parameter_count_tracks_the_modules() -> None:
    """Adding a parameter to a module changes the count: nothing is assumed from the config."""
    _, moe_model, _ = _pair("tiny", vocab=300, ctx=16)
    before = count_parameters(moe_model)
    moe_model.blocks[0].mlp.experts[0].extra = torch.nn.Parameter(torch.zeros(7, device="meta"))
    after = count_parameters(moe_model)
    assert after.total == before.total + 7
    assert after.experts == before.experts + 7
