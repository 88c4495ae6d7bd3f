"""A run killed mid-way and resumed from its checkpoint ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.models.train_helpers import run

ROOT = Path(__file__).resolve().parents[2]


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.models.train_helpers", str(killed), "7"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = json.loads((killed / "checkpoint" / "trainer_state.json").read_text())
    assert saved["step"] == 6  # step 7 finished but was lost with the process

    resumed = run(killed)
    straight = run(tmp_path / "straight")

    assert resumed.state["step"] == straight.state["step"] == 10
    assert resumed.state["tokens_seen"] == straight.state["tokens_seen"]
    resumed_params = dict(resumed.model.named_parameters())
    for name, param in straight.model.named_parameters():
        assert torch.equal(param, resumed_params[name]), name
    assert [h["loss"] for h in resumed.state["history"]] == [
        h["loss"] for h in straight.state["history"]
    ]
    assert resumed.evaluation.val_loss == straight.evaluation.val_loss
    # The run really was interrupted and trained on: weights moved from their initial values.
    assert resumed.state["history"][0]["loss"] > resumed.state["history"][-1]["loss"]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    import dataclasses

    import pytest

    from crossdiff.errors import ConfigError
    from crossdiff.models.ddp import DistContext
    from crossdiff.models.train import train
    from tests.models import train_helpers
    from tests.models.conftest import synthetic_sequences

    short = dataclasses.replace(train_helpers.TRAIN, tokens=8 * 16 * 3)
    context = DistContext(rank=0, world_size=1, device="cpu")
    train(train_helpers.MODEL, short, synthetic_sequences(), tmp_path, context, log=None)
    other = dataclasses.replace(short, lr=5e-3)
    with pytest.raises(ConfigError, match="different train_config"):
        train(train_helpers.MODEL, other, synthetic_sequences(), tmp_path, context, log=None)
