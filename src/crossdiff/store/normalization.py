"""Per-model, per-site normalisation factors: scale ``f`` such that E‖f·x‖ = √D.

Models differ in activation scale by orders of magnitude; a crosscoder trained on raw
activations would spend its capacity on the loudest model. Each shard records the sum of the
L2 norms of its rows (float64) and its row count; the factor is computed from all shards, in
shard order, so a resumed harvest gets bit-identical factors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from crossdiff.errors import StageError


def norm_sum(activations: torch.Tensor) -> float:
    """Sum over rows of the L2 norm of ``activations [N, D]``, in float64."""
    return float(torch.linalg.vector_norm(activations.double(), dim=-1).sum())


def norm_factor(total_norm: float, count: int, dim: int) -> float:
    """The factor √D / mean‖x‖ from a sum of norms over ``count`` rows of width ``dim``."""
    if count <= 0 or not total_norm > 0 or not math.isfinite(total_norm):
        raise StageError(
            f"cannot compute a normalisation factor: {count} rows with norm sum {total_norm!r}"
        )
    return math.sqrt(dim) / (total_norm / count)


def combine_factors(
    shard_sums: Iterable[Mapping[str, float]], shard_counts: Iterable[int], dims: Mapping[str, int]
) -> dict[str, float]:
    """Factors per key from per-shard norm sums and row counts, summed in the order given."""
    totals = dict.fromkeys(dims, 0.0)
    count = 0
    for sums, rows in zip(shard_sums, shard_counts, strict=True):
        for key in totals:
            totals[key] += float(sums[key])
        count += int(rows)
    return {key: norm_factor(totals[key], count, dims[key]) for key in dims}
