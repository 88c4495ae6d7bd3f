"""Run by ``torchrun`` in test_train.py (and in-process for the one-process reference)."""

from __future__ import annotations

import json
import sys

import torch

from crossdiff.crosscoder import TrainConfig
from crossdiff.crosscoder.distributed import Collectives, finish_distributed, init_distributed
from crossdiff.crosscoder.train import train
from tests.crosscoder.conftest import planted, small_crosscoder

DDP_TRAIN = TrainConfig(steps=12, lr=3e-3, warmup_steps=2, dead_tokens=128, aux_k=6)


def run() -> list[float]:
    """Train 12 steps on global batches of 64 planted tokens; returns the loss curve."""
    model = small_crosscoder(n_shared=0, d_models=(12, 16))
    data = planted(d=(12, 16), noise=0.05).batches(64, 12, seed=5)
    result = train(model, data, DDP_TRAIN)
    assert any(s.aux > 0 for s in result.history), "aux-k never engaged"
    return [s.loss for s in result.history]


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed()
    losses = run()
    if Collectives().rank == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(losses, handle)
    finish_distributed()
