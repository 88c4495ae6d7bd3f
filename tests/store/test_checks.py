"""The NaN/inf check: exact on extreme finite values, precise about where the first bad one is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdiff.store import NonFiniteActivationError
from crossdiff.store.checks import check_finite


def test_huge_finite_values_pass() -> None:
    acts = torch.full((4, 8, 16), 3.0e38)  # float32 sum would overflow to inf; float64 does not
    check_finite(acts, "m", "0.mlp_out", np.arange(4))
    check_finite(acts.half().clamp(-6e4, 6e4), "m", "0.mlp_out", np.arange(4))


@pytest.mark.parametrize(
    ("values", "kind"), [((float("inf"), float("-inf")), "inf"), ((1.0, float("nan")), "NaN")]
)
def test_non_finite_values_are_located(values, kind) -> None:
    acts = torch.zeros(3, 5, 4)  # [B, P, D]
    acts[2, 4, 1], acts[1, 2, 3] = values
    with pytest.raises(NonFiniteActivationError, match=rf"{kind}.*sequence 11 position 2"):
        check_finite(acts, "moe", "3.mlp_out", np.array([7, 11, 13]))
