"""A short, fully seeded MoE training run used by the resume test (also runnable as a script).

``python -m tests.models.train_helpers OUT KILL_AT`` trains in ``OUT`` and SIGKILLs itself right
after step ``KILL_AT`` — a real kill, at a known point, after the checkpoint of step 6.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from crossdiff.models.config import ModelConfig, TrainConfig
from crossdiff.models.ddp import DistContext
from crossdiff.models.train import TrainResult, train
from tests.models.conftest import synthetic_sequences

MODEL = ModelConfig(
    arch="moe",
    n_layers=2,
    d_model=32,
    n_heads=2,
    d_mlp=64,
    num_experts=4,
    experts_per_token=2,
    vocab_size=64,
    n_ctx=16,
    seed=1,
)
TRAIN = TrainConfig(
    tokens=8 * 16 * 10,
    batch_size=8,
    lr=1e-2,
    warmup_steps=3,
    z_loss_coef=1e-3,
    eval_every=4,
    eval_sequences_per_domain=4,
    final_eval_sequences_per_domain=4,
    checkpoint_every=3,
    log_every=0,
)
"""10 steps, checkpoints after steps 3, 6, 9 and 10, evaluations after steps 4 and 8."""


def run(out: str | Path, kill_at: int | None = None) -> TrainResult:
    """Train MODEL with TRAIN on synthetic data in ``out`` on one thread; optionally die."""

    def on_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        context = DistContext(rank=0, world_size=1, device="cpu")
        return train(MODEL, TRAIN, synthetic_sequences(), out, context, on_step, log=None)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
