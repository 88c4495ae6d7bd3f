"""The learning-rate schedule and the seeded, stateless batch order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from crossdiff.models.config import TrainConfig
from crossdiff.models.data import BatchOrder
from crossdiff.models.optim import learning_rate


def test_warmup_then_cosine_to_the_floor() -> None:
    config = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [learning_rate(s, 20, config) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))  # non-increasing
    assert learning_rate(20, 20, config) == pytest.approx(0.1)
    midpoint = learning_rate(12, 20, config)  # halfway through the decay: (1 + 0.1) / 2
    assert midpoint == pytest.approx(0.55)


def test_batch_order_covers_each_epoch_once_and_is_deterministic() -> None:
    order = BatchOrder(n_rows=10, batch_size=4, seed=3)
    stream = np.concatenate([order.global_batch(s) for s in range(5)])  # 20 rows = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # each epoch reshuffled
    again = BatchOrder(n_rows=10, batch_size=4, seed=3)
    assert np.array_equal(again.global_batch(3), order.global_batch(3))  # no hidden state
    assert not np.array_equal(BatchOrder(10, 4, seed=4).global_batch(0), order.global_batch(0))


def test_ranks_split_the_global_batch() -> None:
    order = BatchOrder(n_rows=50, batch_size=8, seed=0)
    parts = [order.local_batch(7, rank, 2) for rank in range(2)]
    assert np.array_equal(np.concatenate(parts), order.global_batch(7))
    assert all(len(p) == 4 for p in parts)
