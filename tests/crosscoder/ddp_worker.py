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


def tied_preacts() -> torch.Tensor:
    """``[64, 48]`` small-integer pre-activations: most scores tie with many others."""
    return torch.randint(-4, 6, (64, 48), generator=torch.Generator().manual_seed(7)).float()


def tie_selection() -> list[int]:
    """Global flat indices BatchTopK keeps (k·B = 200) on :func:`tied_preacts`, this process
    selecting on its contiguous slice; gathered on every process."""
    coll = Collectives()
    model = small_crosscoder(rank_by_decoder_norm=False)
    model.threshold.fill_(2.0)  # the candidate filter cuts at a tie value
    size = 64 // coll.world
    local = tied_preacts()[coll.rank * size : (coll.rank + 1) * size]
    pattern, _, _ = model.batch_topk(local, 200, coll.topk_cut if coll.active else None)
    mine = ((pattern.rows_N + coll.rank * size) * 48 + pattern.cols_N).tolist()
    if not coll.active:
        return mine
    parts: list = [None] * coll.world
    torch.distributed.all_gather_object(parts, mine)
    return [i for part in parts for i in part]


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_distributed()
    losses = run()
    ties = tie_selection()
    if Collectives().rank == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump({"losses": losses, "ties": ties}, handle)
    finish_distributed()
