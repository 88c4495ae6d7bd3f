"""Every superposition metric on hand-built weights whose value is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from crossdiff.toy import metrics


def pentagon_HN(radius: float = 1.0) -> torch.Tensor:
    """Five features at the vertices of a regular pentagon in 2-D (columns)."""
    angles = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    return radius * torch.stack([angles.cos(), angles.sin()])


def test_orthogonal_features_have_dimensionality_one_and_no_superposition() -> None:
    W_HN = torch.eye(3, dtype=torch.float64)[:, :3] * 2.0  # norms 2: the seed's "−1" bug shows
    assert torch.allclose(metrics.feature_dimensionality(W_HN), torch.ones(3, dtype=W_HN.dtype))
    assert torch.allclose(metrics.superposition(W_HN), torch.zeros(3, dtype=W_HN.dtype))
    # the seed code subtracted 1 instead of ‖W_i‖²: it would report 4 − 1 = 3 here
    seed_version = (metrics._overlaps(W_HN)[1].sum(-1) - 1).tolist()
    assert seed_version == [3.0, 3.0, 3.0]
    assert metrics.feature_states(W_HN).tolist() == [metrics.DEDICATED] * 3
    assert metrics.expert_dimensionality(W_HN).item() == pytest.approx(3 / 12)


def test_an_antipodal_pair_has_dimensionality_one_half() -> None:
    W_HN = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    assert metrics.feature_dimensionality(W_HN).tolist() == [0.5, 0.5]
    assert metrics.superposition(W_HN).tolist() == [1.0, 1.0]
    assert metrics.feature_states(W_HN).tolist() == [metrics.SUPERPOSED] * 2
    assert metrics.expert_dimensionality(W_HN).item() == pytest.approx(1 / 2)


@pytest.mark.parametrize("radius", [1.0, 0.7])
def test_a_regular_pentagon_has_dimensionality_two_fifths(radius: float) -> None:
    W_HN = pentagon_HN(radius)
    expected = torch.full((5,), 0.4, dtype=torch.float64)
    assert torch.allclose(metrics.feature_dimensionality(W_HN), expected)
    # Σ_j (Ŵ_i·W_j)² = r²·Σ_j cos²(2πj/5) = 5r²/2, minus the feature's own r²
    assert torch.allclose(metrics.superposition(W_HN), expected * 0 + 1.5 * radius**2)
    assert metrics.expert_dimensionality(W_HN).item() == pytest.approx(2 / (5 * radius**2))


def test_zero_weights_are_ignored() -> None:
    W_HN = torch.tensor([[1.0, 0.0, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert metrics.feature_dimensionality(W_HN)[1].item() == 0.0
    assert metrics.superposition(W_HN)[1].item() == 0.0
    assert metrics.feature_states(W_HN).tolist() == [
        metrics.DEDICATED, metrics.IGNORED, metrics.IGNORED,
    ]  # fmt: skip


def test_a_one_hot_hidden_dimension_is_monosemantic() -> None:
    W_HN = torch.tensor(
        [[0.0, 2.0, 0.0], [0.9, -0.1, 0.1], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    mono_H, used_H = metrics.monosemantic_dimensions(W_HN)
    # row 1: 0.9 / 1.1 = 0.818 ≥ 0.8; row 2: 0.5; row 3 unused
    assert mono_H.tolist() == [True, True, False, False]
    assert used_H.tolist() == [True, True, True, False]
    assert metrics.monosemantic_fraction(W_HN).item() == pytest.approx(2 / 3)
    assert math.isnan(metrics.monosemantic_fraction(torch.zeros(2, 3)).item())


def test_specialisation_is_the_dedicated_share_of_represented_features() -> None:
    identity = torch.eye(2, 3, dtype=torch.float64)  # features 0, 1 dedicated; 2 ignored
    assert metrics.expert_specialisation(identity).item() == 1.0
    # a rotation of the hidden space changes no feature's state (no privileged basis) ...
    c, s = math.cos(0.6), math.sin(0.6)
    rotated = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) @ identity
    assert metrics.expert_specialisation(rotated).item() == 1.0
    # ... while it makes the hidden dimensions polysemantic
    assert metrics.monosemantic_fraction(rotated).item() == 0.0
    antipodal_and_one = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert metrics.expert_specialisation(antipodal_and_one).item() == pytest.approx(1 / 3)
    assert math.isnan(metrics.expert_specialisation(torch.zeros(2, 3)).item())
    batched = torch.stack([identity, antipodal_and_one])  # leading expert axis
    assert metrics.expert_specialisation(batched).tolist() == pytest.approx([1.0, 1 / 3])


@pytest.mark.parametrize("E", [2, 4, 8])
def test_router_uniformity_is_normalised_by_the_true_maximum(E: int) -> None:
    one_hot = torch.zeros(E, dtype=torch.float64)
    one_hot[0] = 1.0
    # the population variance of shares summing to 1 peaks at (E−1)/E² for a one-hot usage
    variance = float(((one_hot - 1 / E) ** 2).mean())
    assert variance == pytest.approx((E - 1) / E**2)
    assert metrics.router_uniformity(one_hot).item() == pytest.approx(0.0, abs=1e-12)
    assert metrics.router_uniformity(torch.ones(E)).item() == pytest.approx(1.0)
    two = torch.zeros(E, dtype=torch.float64)
    two[:2] = 0.5  # variance ((1/2 − 1/E)²·2 + (E−2)/E²) / E, recomputed by hand
    expected = 1 - (2 * (0.5 - 1 / E) ** 2 + (E - 2) / E**2) / E / ((E - 1) / E**2)
    assert metrics.router_uniformity(two * 3).item() == pytest.approx(expected)
    assert metrics.router_uniformity(torch.ones(1)).item() == 1.0


def test_usage_weighting_skips_experts_with_nothing_to_measure() -> None:
    values_E = torch.tensor([1.0, float("nan"), 0.0])
    usage_E = torch.tensor([0.25, 0.5, 0.25])
    assert metrics.usage_weighted(values_E, usage_E).item() == pytest.approx(0.5)
    values_EN = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weighted = metrics.usage_weighted(values_EN, torch.tensor([0.75, 0.25]))
    assert weighted.tolist() == pytest.approx([0.75, 0.25])
