"""The crosscoder stage keeps its training curve, and the report draws it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crossdiff.crosscoder.stage import write_train_log
from crossdiff.crosscoder.train import StepStats


def stats(step: int) -> StepStats:
    return StepStats(step, loss=1.0 / step, mse=0.5, aux=0.0, fve=0.9, l0=8.0,
                     dead_fraction=0.1, lr=1e-3, k=8.0)  # fmt: skip


def test_a_resumed_run_keeps_the_steps_before_it(tmp_path: Path) -> None:
    path = tmp_path / "train_log.json"
    write_train_log(path, [stats(s) for s in range(1, 8)])  # interrupted after step 7...
    write_train_log(path, [stats(s) for s in range(6, 11)])  # ...resumed from the step-5 checkpoint
    history = json.loads(path.read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, 11))
    assert history[-1]["loss"] == pytest.approx(0.1) and set(history[0]) >= {"fve", "l0", "lr"}


@pytest.mark.slow
def test_the_run_report_draws_the_crosscoder_curve(report_run: Path) -> None:
    if os.environ.get("CROSSDIFF_REPORT_RUN"):
        pytest.skip("a run from before the training log was kept")
    history = json.loads((report_run / "crosscoder" / "train_log.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, 301))  # steps = 300 in the run config
    assert (report_run / "report" / "figures" / "crosscoder_training.png").is_file()
    assert "The crosscoder&#x27;s training" in (report_run / "report" / "report.html").read_text()
