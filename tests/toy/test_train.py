"""The batched model and trainer: closed-form forward, and batched = one model at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crossdiff.errors import ConfigError
from crossdiff.toy.config import ToyConfig
from crossdiff.toy.model import ToyParams, forward, init_params
from crossdiff.toy.train import load_balance_loss, train_batch, train_models
from tests.devices import DEVICES


def test_the_dense_model_is_relu_of_wtw_x_plus_b() -> None:
    generator = torch.Generator().manual_seed(0)
    W_HN = torch.randn((3, 7), generator=generator, dtype=torch.float64)
    b_N = torch.randn(7, generator=generator, dtype=torch.float64)
    x_BN = torch.rand((5, 7), generator=generator, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.long)
    params = ToyParams(
        W_HN[None, None], b_N[None, None], torch.zeros(1, 1, 7).double(), one, one,
        torch.tensor([True]),
    )  # fmt: skip
    out = forward(params, x_BN[None])
    expected_BN = torch.relu(x_BN @ W_HN.T @ W_HN + b_N)
    assert torch.allclose(out.x_hat_MBN[0], expected_BN)
    assert torch.equal(out.gates_MBE, torch.ones(1, 5, 1, dtype=torch.float64))


def test_the_moe_mixes_its_top_k_experts_renormalised() -> None:
    # three experts, each the identity on one feature of 3; router logits = log(p) by hand
    W_EHN = torch.eye(3, dtype=torch.float64)[:, None, :]  # expert e keeps feature e
    b_EN = torch.zeros(3, 3, dtype=torch.float64)
    R_EN = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)).T.expand(3, 3)
    x_BN = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64) / 3  # logits = log(p)·1
    # model 0: E = 3, k = 2; model 1: the same weights but E = 2 (expert 2 is padding), k = 1
    params = ToyParams(
        W_EHN[None].repeat(2, 1, 1, 1), b_EN[None].repeat(2, 1, 1), R_EN[None].repeat(2, 1, 1),
        torch.tensor([3, 2]), torch.tensor([2, 1]), torch.tensor([True, True]),
    )  # fmt: skip
    out = forward(params, x_BN[None].repeat(2, 1, 1))
    assert out.probs_MBE[0, 0].tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert out.gates_MBE[0, 0].tolist() == pytest.approx([0.625, 0.375, 0.0])
    # expert e reconstructs only feature e: x̂ = (0.625·x_0, 0.375·x_1, 0)
    assert out.x_hat_MBN[0, 0].tolist() == pytest.approx([0.625 / 3, 0.375 / 3, 0.0])
    # two experts: softmax over (0.5, 0.3) only; top-1 takes all the weight
    assert out.probs_MBE[1, 0].tolist() == pytest.approx([0.625, 0.375, 0.0])
    assert out.gates_MBE[1, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert out.x_hat_MBN[1, 0].tolist() == pytest.approx([1 / 3, 0.0, 0.0])


def test_load_balance_is_one_for_uniform_routing_and_e_for_collapse() -> None:
    params = init_params([0], [4], [1], ["random"], n_features=4, d_hidden=2)
    with torch.no_grad():
        params.R_MEN.zero_()
        params.R_MEN[0, :, 0] = torch.tensor([0.0, 0.0, 0.0, 50.0])  # feature 0 routes to 3
        x_MBN = torch.zeros(1, 8, 4)
        x_MBN[0, :, 0] = 1.0
        collapsed = load_balance_loss(forward(params, x_MBN), params.experts_M).item()
        x_MBN = torch.eye(4)[None].repeat(1, 2, 1)
        params.R_MEN[0] = torch.eye(4) * 50.0  # feature e routes to expert e
        balanced = load_balance_loss(forward(params, x_MBN), params.experts_M).item()
    assert collapsed == pytest.approx(4.0)
    assert balanced == pytest.approx(1.0)


@pytest.mark.parametrize(
    "base",
    [
        ToyConfig(n_features=5, d_hidden=2, steps=60, batch_size=64),
        ToyConfig(
            n_features=6, d_hidden=2, n_experts=3, k=2, steps=60, batch_size=64,
            correlation="anticorrelated", group_size=3,
        ),
        ToyConfig(n_features=4, d_hidden=2, n_experts=2, steps=30, batch_size=32, init="dense"),
    ],
    ids=["dense", "moe", "moe-from-dense"],
)  # fmt: skip
def test_batched_training_equals_training_each_model_alone(base: ToyConfig) -> None:
    configs = [
        dataclasses.replace(base, sparsity=s, importance_decay=d, seed=seed, load_balance=lb)
        for s, d, seed, lb in [(0.0, 1.0, 0, 0.0), (0.9, 0.8, 1, 0.1), (0.5, 1.2, 0, 0.01)]
    ]
    if base.n_experts == 3:  # models with fewer experts, another k and init share the batch
        configs += [
            dataclasses.replace(base, n_experts=2, k=1, seed=2, sparsity=0.7),
            dataclasses.replace(base, n_experts=1, k=1, seed=3, sparsity=0.7),
            dataclasses.replace(base, init="aligned", seed=4, sparsity=0.7),
        ]
    batched = train_batch(configs)
    for index, config in enumerate(configs):
        alone = train_batch([config])
        E = config.n_experts  # the batch pads a model's experts to the batch's most
        for mine, theirs in zip(alone.params.tensors(), batched.params.tensors(), strict=True):
            torch.testing.assert_close(mine[0], theirs[index, :E], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone.loss_M[0], batched.loss_M[index], rtol=1e-5, atol=1e-7)
    # the models did train and differ from each other
    assert not torch.allclose(batched.params.W_MEHN[0], batched.params.W_MEHN[1])


def test_models_are_grouped_into_batches_by_shape() -> None:
    configs = [
        ToyConfig(n_features=n, d_hidden=1, steps=2, batch_size=4, seed=s, n_experts=E)
        for n in (3, 4)
        for E in (1, 2)
        for s in (0, 1)
    ]
    batches = train_models(configs)
    assert [len(b.configs) for b in batches] == [4, 4]
    assert [b.params.W_MEHN.shape for b in batches] == [(4, 2, 1, 3), (4, 2, 1, 4)]
    with pytest.raises(ConfigError, match="share every setting"):
        train_batch(configs)


@pytest.mark.parametrize("device", DEVICES)
def test_training_runs_on_device_and_matches_the_cpu(device: str) -> None:
    config = ToyConfig(n_features=5, d_hidden=2, n_experts=2, steps=20, batch_size=32)
    batch = train_batch([config], device=device)
    assert batch.params.W_MEHN.device.type == device
    reference = train_batch([config], device="cpu")
    torch.testing.assert_close(
        batch.params.W_MEHN.cpu(), reference.params.W_MEHN, rtol=1e-4, atol=1e-5
    )
