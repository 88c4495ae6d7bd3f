"""Mixed precision: bf16 autocast where asked for (and on CUDA by default), fp32 on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from crossdiff.models.config import ModelConfig, TrainConfig
from crossdiff.models.ddp import DistContext
from crossdiff.models.train import autocast_factory, resolve_precision, train
from tests.models.conftest import synthetic_sequences


def test_auto_precision_is_fp32_on_cpu() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert autocast_factory("fp32", "cpu") is None
    with autocast_factory("bf16", "cpu")():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_training_runs_and_keeps_fp32_weights(tmp_path: Path) -> None:
    model = ModelConfig(
        arch="moe",
        n_layers=1,
        d_model=16,
        n_heads=2,
        d_mlp=32,
        num_experts=4,
        experts_per_token=2,
        vocab_size=64,
        n_ctx=16,
    )
    config = TrainConfig(
        tokens=4 * 16 * 4,
        batch_size=4,
        precision="bf16",
        eval_every=0,
        checkpoint_every=0,
        log_every=0,
        final_eval_sequences_per_domain=2,
    )
    context = DistContext(rank=0, world_size=1, device="cpu")
    result = train(model, config, synthetic_sequences(), tmp_path, context, log=None)
    assert result.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert all(math.isfinite(h["loss"]) for h in result.state["history"])
    assert all(math.isfinite(v) for v in result.evaluation.val_loss.values())
