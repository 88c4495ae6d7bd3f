"""Model training sends each step's losses and throughput to the tracker (main process only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.models.stage import train_model_stage
from crossdiff.tracking import TrackingConfig
from tests.test_tracking import FakeRun, fake_wandb  # noqa: F401  (the fixture)

MODEL = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32, "num_experts": 4,
         "experts_per_token": 2}  # fmt: skip
TRAIN = {"tokens": 1024, "batch_size": 8, "warmup_steps": 2, "eval_every": 0,
         "checkpoint_every": 0, "log_every": 0, "final_eval_sequences_per_domain": 4}  # fmt: skip


def test_model_training_steps_reach_the_tracker(
    tiny_corpus: Path,
    tmp_path: Path,
    fake_wandb: list[FakeRun],  # noqa: F811
) -> None:
    out = tmp_path / "moe"
    train_model_stage(tiny_corpus, out, "moe", "tiny", MODEL, TRAIN, progress=False,
                      tracking=TrackingConfig("wandb", project="lm"))  # fmt: skip
    (run,) = fake_wandb
    assert run.init["name"] == "models/moe" and run.finished
    log = json.loads((out / "train_log.json").read_text())["history"]
    assert [step for step, _ in run.logged] == [r["step"] for r in log] == list(range(1, 9))
    for (_, values), record in zip(run.logged, log, strict=True):
        assert values["model/loss"] == pytest.approx(record["loss"])
        assert values["model/balance"] == pytest.approx(record["balance"])
    assert all(v["throughput/tokens_per_s"] > 0 for _, v in run.logged[1:])
