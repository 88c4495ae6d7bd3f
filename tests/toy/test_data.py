"""Feature sampling: sparsity, correlated and anticorrelated groups, importances, seed streams."""

from __future__ import annotations

import torch

from crossdiff.toy.data import UniformStream, feature_importance, features_from_uniforms


def uniforms(M: int = 3, B: int = 20_000, N: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand((3, M, B, N), generator=torch.Generator().manual_seed(seed))


def test_each_feature_is_present_with_probability_one_minus_sparsity() -> None:
    sparsity_M = torch.tensor([0.0, 0.5, 0.9])
    x_MBN = features_from_uniforms(uniforms(), sparsity_M, "none", 2)
    present_M = (x_MBN > 0).float().mean((1, 2))
    assert torch.allclose(present_M, 1 - sparsity_M, atol=0.01)
    assert x_MBN.max() < 1 and x_MBN.min() >= 0
    values = x_MBN[x_MBN > 0]
    assert abs(values.mean().item() - 0.5) < 0.01  # uniform in [0, 1]


def test_correlated_groups_appear_together_and_anticorrelated_alone() -> None:
    sparsity_M = torch.tensor([0.3, 0.3, 0.3])
    together = features_from_uniforms(uniforms(), sparsity_M, "correlated", 3) > 0
    assert torch.equal(together[..., 0], together[..., 1])
    assert torch.equal(together[..., 3], together[..., 5])
    assert not torch.equal(together[..., 0], together[..., 3])
    alone = features_from_uniforms(uniforms(), sparsity_M, "anticorrelated", 3) > 0
    per_group = alone.view(3, -1, 2, 3).sum(-1)
    assert per_group.max() == 1
    assert abs(per_group.float().mean().item() - 0.7) < 0.01  # a group is active w.p. 1 − S
    assert abs(alone.float().mean().item() - 0.7 / 3) < 0.01  # each feature a third of that


def test_importance_decays_geometrically() -> None:
    I_MN = feature_importance(4, torch.tensor([1.0, 0.5]))
    assert I_MN.tolist() == [[1, 1, 1, 1], [1, 0.5, 0.25, 0.125]]


def test_a_models_stream_depends_on_its_seed_only() -> None:
    alone = UniformStream([7], 16, 4)
    together = UniformStream([3, 7, 7, 1], 16, 4)
    for _ in range(3):
        u_alone, u_together = alone.next(), together.next()
        assert torch.equal(u_alone[:, 0], u_together[:, 1])
        assert torch.equal(u_together[:, 1], u_together[:, 2])
        assert not torch.equal(u_together[:, 0], u_together[:, 1])
