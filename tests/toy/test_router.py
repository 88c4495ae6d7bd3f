"""Toy routers train: their weights move far beyond roundoff, except where nothing can train them.

With k = 1 and renormalised weights every routed weight is p/p = 1, so the reconstruction loss
gives the router no gradient; the default (``router_weights = "auto"``) therefore uses the chosen
expert's softmax probability at k = 1 (Switch) and renormalises only at k ≥ 2.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from crossdiff.errors import ConfigError
from crossdiff.toy.config import ToyConfig
from crossdiff.toy.model import forward, init_params
from crossdiff.toy.train import train_batch

BASE = ToyConfig(
    n_features=8, d_hidden=2, n_experts=4, k=1, sparsity=0.7, steps=150, batch_size=64, lr=0.01
)
MOVED = 0.05
"""A router that trains moves by at least this share of its initial norm (roundoff: ~1e-7)."""


def router_movement(configs: list[ToyConfig]) -> torch.Tensor:
    """‖R_final − R_init‖ / ‖R_init‖ per model, each over its own experts (float64)."""
    first = configs[0]
    initial = init_params(
        [c.seed for c in configs], [c.n_experts for c in configs], [c.k for c in configs],
        [c.init for c in configs], first.n_features, first.d_hidden, first.group_size,
    ).R_MEN.detach().double()  # fmt: skip
    final = train_batch(configs).params.R_MEN.double()
    return ((final - initial).norm(dim=(1, 2)) / initial.norm(dim=(1, 2))).detach()


def test_the_default_weights_are_switch_at_k_1_and_renormalised_above() -> None:
    assert not BASE.renormalised and BASE.router_weights == "auto"
    assert dataclasses.replace(BASE, k=2).renormalised
    assert not dataclasses.replace(BASE, k=2, router_weights="softmax").renormalised
    with pytest.warns(UserWarning, match="router gets no gradient"):
        assert dataclasses.replace(BASE, router_weights="renormalised").renormalised
    with warnings.catch_warnings():  # load balancing trains it, so no warning
        warnings.simplefilter("error")
        dataclasses.replace(BASE, router_weights="renormalised", load_balance=0.01)
        dataclasses.replace(BASE, n_experts=1, router_weights="renormalised")  # dense: no router


def test_a_bad_router_weights_value_is_named_with_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        ToyConfig(router_weights="softmx")
    message = str(error.value)
    assert "unknown router_weights 'softmx' (did you mean 'softmax'?)" in message
    assert "auto, renormalised, softmax" in message and "\n" not in message


@pytest.mark.parametrize("router_weights", ["renormalised", "softmax"])
def test_renormalised_top_1_has_exactly_no_router_gradient(router_weights: str) -> None:
    # the old p/p quotient left a roundoff gradient (~1e-8) that Adam scales up to full steps
    renormalise = router_weights == "renormalised"
    params = init_params([0, 1], [3, 3], [1, 1], ["random"] * 2, 4, 2, renormalise=renormalise)
    x_MBN = torch.rand((2, 16, 4), generator=torch.Generator().manual_seed(0))
    out = forward(params, x_MBN)
    out.x_hat_MBN.sum().backward()
    if renormalise:
        assert torch.equal(out.gates_MBE.sum(-1), torch.ones(2, 16))
        assert torch.count_nonzero(params.R_MEN.grad) == 0
    else:
        torch.testing.assert_close(out.gates_MBE.sum(-1), out.probs_MBE.max(-1).values)
        assert params.R_MEN.grad.abs().max() > 1e-3


def test_renormalised_top_k_equals_the_probabilities_divided_by_their_sum() -> None:
    params = init_params([3], [4], [2], ["random"], 5, 2, renormalise=True)
    x_MBN = torch.rand((1, 32, 5), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    out = forward(params, x_MBN)
    top_MBK, index_MBK = out.probs_MBE.topk(2, dim=-1)
    expected = torch.zeros_like(out.probs_MBE).scatter(
        -1, index_MBK, top_MBK / top_MBK.sum(-1, keepdim=True)
    )
    torch.testing.assert_close(out.gates_MBE, expected)


def test_routers_train_at_every_k_with_the_default_and_not_when_nothing_can_move_them() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the control below is the warned setting
        cases = {
            "k=1 auto (Switch)": BASE,
            "k=1 Switch + load balance": dataclasses.replace(BASE, load_balance=0.01),
            "k=1 renormalised + load balance": dataclasses.replace(
                BASE, router_weights="renormalised", load_balance=0.01
            ),
            "k=2 auto (renormalised)": dataclasses.replace(BASE, k=2),
            "k=2 Switch": dataclasses.replace(BASE, k=2, router_weights="softmax"),
            "k=4 of 4 auto": dataclasses.replace(BASE, k=4),
            "control: k=1 renormalised, no load balance": dataclasses.replace(
                BASE, router_weights="renormalised"
            ),
        }
    movement = dict(zip(cases, router_movement(list(cases.values())).tolist(), strict=True))
    print("router movement ‖R − R₀‖/‖R₀‖:", {name: round(m, 4) for name, m in movement.items()})
    for name, moved in movement.items():
        if name.startswith("control"):  # no gradient reaches the router: it stays put exactly
            assert moved == 0.0, (name, movement)
        else:
            assert moved > MOVED, (name, movement)
