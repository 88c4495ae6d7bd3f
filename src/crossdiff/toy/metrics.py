"""Superposition metrics on toy weights (Elhage et al.; facts §7), pure functions of tensors.

Every function takes weights ``W_...HN`` (any leading axes: models, experts) whose column
``W_i`` is feature i's direction in the hidden space. Two bugs of the seed code are fixed here:
superposition subtracts ‖W_i‖² (not 1), and router uniformity is normalised by the true maximum
(E−1)/E² of the usage variance.
"""

from __future__ import annotations

import torch

REPRESENTED_NORM = 0.5
"""A feature is represented (not ignored) when ‖W_i‖ ≥ this."""
DEDICATED_DIMENSIONALITY = 0.9
"""A represented feature is dedicated when D_i ≥ this (its interference ≤ 11% of ‖W_i‖²);
otherwise it is superposed."""
MONOSEMANTIC_SHARE = 0.8
"""A hidden dimension is monosemantic when one feature holds ≥ this share of its L1 weight."""
DEAD_ROW_L1 = 1e-3
"""Hidden dimensions whose L1 weight is below this are unused (neither mono- nor polysemantic)."""

IGNORED, DEDICATED, SUPERPOSED = 0, 1, 2
STATE_NAMES = ("ignored", "dedicated", "superposed")


def expert_dimensionality(W_HN: torch.Tensor) -> torch.Tensor:
    """D* = m / ‖W‖_F²: hidden dimensions per unit of represented feature norm, ``[...]``."""
    m = W_HN.shape[-2]
    return m / (W_HN**2).sum((-2, -1))


def _overlaps(W_HN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """‖W_i‖² ``[..., N]`` and (Ŵ_i·W_j)² ``[..., N, N]`` (row i zero for a zero column)."""
    norm2_N = (W_HN**2).sum(-2)
    unit_HN = W_HN / norm2_N.sqrt().clamp_min(1e-12)[..., None, :]
    dots_NN = unit_HN.transpose(-2, -1) @ W_HN
    return norm2_N, dots_NN**2


def feature_dimensionality(W_HN: torch.Tensor) -> torch.Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², ``[..., N]``; 0 for a zero column."""
    norm2_N, overlap_NN = _overlaps(W_HN)
    return norm2_N / overlap_NN.sum(-1).clamp_min(1e-12)


def superposition(W_HN: torch.Tensor) -> torch.Tensor:
    """Interference Σ_{j≠i} (Ŵ_i·W_j)² = Σ_j (Ŵ_i·W_j)² − ‖W_i‖², ``[..., N]``."""
    norm2_N, overlap_NN = _overlaps(W_HN)
    return overlap_NN.sum(-1) - norm2_N * (norm2_N > 0)


def feature_states(W_HN: torch.Tensor) -> torch.Tensor:
    """Each feature's state, ``[..., N]``: IGNORED, DEDICATED or SUPERPOSED (thresholds above)."""
    norm_N = (W_HN**2).sum(-2).sqrt()
    dimensionality_N = feature_dimensionality(W_HN)
    states_N = torch.full_like(norm_N, SUPERPOSED, dtype=torch.long)
    states_N[dimensionality_N >= DEDICATED_DIMENSIONALITY] = DEDICATED
    states_N[norm_N < REPRESENTED_NORM] = IGNORED
    return states_N


def monosemantic_dimensions(W_HN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per hidden dimension: (monosemantic, used), each ``[..., H]`` bool.

    The toy model's hidden basis is not privileged (WᵀW is unchanged by a rotation of the hidden
    space), so this measures the basis training happened to settle in; see docs/toy.md.

    Dimension h is used when its L1 weight Σ_i |W_hi| ≥ ``DEAD_ROW_L1``, and monosemantic when
    it is used and max_i |W_hi| ≥ ``MONOSEMANTIC_SHARE`` · Σ_i |W_hi|.
    """
    absolute_HN = W_HN.abs()
    l1_H = absolute_HN.sum(-1)
    used_H = l1_H >= DEAD_ROW_L1
    return used_H & (absolute_HN.amax(-1) >= MONOSEMANTIC_SHARE * l1_H), used_H


def monosemantic_fraction(W_HN: torch.Tensor) -> torch.Tensor:
    """Share of used hidden dimensions that are monosemantic, ``[...]`` (NaN if none is used)."""
    mono_H, used_H = monosemantic_dimensions(W_HN)
    return mono_H.sum(-1) / used_H.sum(-1).to(W_HN.dtype).where(used_H.any(-1), torch.nan)


def expert_specialisation(W_HN: torch.Tensor) -> torch.Tensor:
    """Share of the represented features that are monosemantic (dedicated), ``[...]``.

    A represented feature (‖W_i‖ ≥ ``REPRESENTED_NORM``) is monosemantic when it has a direction
    of its own, D_i ≥ ``DEDICATED_DIMENSIONALITY``. Unlike the hidden-dimension test this does not
    depend on the hidden basis, which the toy model does not privilege (W and QW, Q orthogonal,
    give the same WᵀW). NaN when the expert represents no feature.
    """
    states_N = feature_states(W_HN)
    represented = (states_N != IGNORED).sum(-1).to(W_HN.dtype)
    dedicated = (states_N == DEDICATED).sum(-1).to(W_HN.dtype)
    return dedicated / represented.where(represented > 0, torch.nan)


def router_uniformity(usage_E: torch.Tensor) -> torch.Tensor:
    """1 − Var(p) / ((E−1)/E²) for usage shares p (normalised to sum 1), ``[...]``.

    The population variance of E shares summing to 1 is at most (E−1)/E² (all load on one
    expert), so this is 1 for uniform routing and 0 for a single used expert; 1 when E = 1.
    """
    E = usage_E.shape[-1]
    if E == 1:
        return torch.ones(usage_E.shape[:-1], dtype=usage_E.dtype, device=usage_E.device)
    p_E = usage_E / usage_E.sum(-1, keepdim=True)
    variance = ((p_E - 1 / E) ** 2).mean(-1)
    return 1 - variance / ((E - 1) / E**2)


def usage_weighted(values_E: torch.Tensor, usage_E: torch.Tensor) -> torch.Tensor:
    """Σ_e u_e v_e / Σ_e u_e over the expert axis (``values_E`` ``[..., E]`` or ``[..., E, N]``).

    Experts whose value is NaN (nothing to measure) are left out of both sums.
    """
    axis = -1
    if values_E.dim() == usage_E.dim() + 1:
        usage_E, axis = usage_E[..., None], -2
    known = ~values_E.isnan()
    weights = usage_E * known
    total = weights.sum(axis)
    return (values_E.nan_to_num() * weights).sum(axis) / total.where(total > 0, torch.nan)
