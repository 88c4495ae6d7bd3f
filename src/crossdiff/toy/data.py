"""Synthetic sparse features: presence with probability 1 − S, value uniform in [0, 1], importances.

Random numbers come from one generator per seed, so every model with a given seed sees the same
uniforms whatever its sparsity or importance (and whatever else is trained beside it): a model
trained alone gets exactly the batches it would get in a batch of hundreds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DATA_SEED_OFFSET = 0x5EED_DA7A
"""Added to a model's seed for its data stream (its initialisation uses the seed itself)."""
EVAL_SEED_OFFSET = 0x00E7_A1
"""Added to a model's seed for the held-out evaluation batch."""


def feature_importance(n_features: int, decay_M: torch.Tensor) -> torch.Tensor:
    """Importances ``I_MN`` = decay_M ** i for features i = 0..n−1."""
    powers_N = torch.arange(n_features, dtype=decay_M.dtype, device=decay_M.device)
    return decay_M[:, None] ** powers_N


def features_from_uniforms(
    u_3MBN: torch.Tensor, sparsity_M: torch.Tensor, correlation: str, group_size: int
) -> torch.Tensor:
    """Features ``x_MBN`` from three uniforms per entry (presence, value, choice in a group).

    ``none``: feature i is present iff presence_i < 1 − S. ``correlated``: a group's features are
    present together (the group's first presence draw decides). ``anticorrelated``: a group is
    active with probability 1 − S, and then exactly one of its features (chosen uniformly) is.
    """
    presence_MBN, value_MBN, choice_MBN = u_3MBN
    n = presence_MBN.shape[-1]
    keep_M11 = (1 - sparsity_M)[:, None, None].to(presence_MBN.dtype)
    if correlation == "none":
        present_MBN = presence_MBN < keep_M11
    else:
        index_N = torch.arange(n, device=presence_MBN.device)
        first_N = (index_N // group_size) * group_size
        group_on_MBN = presence_MBN[..., first_N] < keep_M11
        if correlation == "correlated":
            present_MBN = group_on_MBN
        else:
            size_N = torch.clamp(n - first_N, max=group_size)
            chosen_MBN = (choice_MBN[..., first_N] * size_N).long()
            present_MBN = group_on_MBN & (chosen_MBN == index_N - first_N)
    return present_MBN.to(value_MBN.dtype) * value_MBN


class UniformStream:
    """Per-step uniforms ``u_3MBN`` for models with seeds ``seed_M``: one generator per seed."""

    def __init__(
        self,
        seeds: Sequence[int],
        batch_size: int,
        n_features: int,
        offset: int = DATA_SEED_OFFSET,
        device: torch.device | str = "cpu",
    ) -> None:
        self.distinct = sorted(set(seeds))
        self.index_M = torch.tensor([self.distinct.index(s) for s in seeds], device=device)
        self.generators = [torch.Generator().manual_seed(s + offset) for s in self.distinct]
        self.shape = (3, batch_size, n_features)
        self.device = torch.device(device)

    def next(self) -> torch.Tensor:
        """The next batch of uniforms, ``[3, M, B, N]``, on the stream's device."""
        u_S3BN = torch.stack([torch.rand(self.shape, generator=g) for g in self.generators])
        return u_S3BN.to(self.device)[self.index_M].transpose(0, 1)


def sample_features(
    stream: UniformStream, sparsity_M: torch.Tensor, correlation: str, group_size: int
) -> torch.Tensor:
    """The next batch of features ``x_MBN`` from ``stream``."""
    return features_from_uniforms(stream.next(), sparsity_M, correlation, group_size)
