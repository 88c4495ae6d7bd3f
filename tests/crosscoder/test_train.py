"""Training: exact resume, NaN batches, schedules, and torchrun DDP against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, TrainConfig
from crossdiff.crosscoder.train import TrainingError, k_at, lr_at, train

from .conftest import planted, small_crosscoder

REPO = Path(__file__).resolve().parents[2]
CFG = TrainConfig(steps=20, lr=3e-3, warmup_steps=4, dead_tokens=256, aux_k=6, checkpoint_every=5)


def data(n: int = 20) -> list[dict[str, torch.Tensor]]:
    return list(planted(noise=0.05).batches(64, n, seed=1))


def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path) -> None:
    straight = small_crosscoder()
    full = train(straight, data(), CFG, tmp_path / "straight")

    def interrupted() -> Iterator[dict[str, torch.Tensor]]:
        for i, batch in enumerate(data()):
            if i == 12:
                raise KeyboardInterrupt
            yield batch

    resumed = small_crosscoder()
    with pytest.raises(KeyboardInterrupt):
        train(resumed, interrupted(), CFG, tmp_path / "resumed")
    fresh = small_crosscoder()
    second = train(fresh, data(), CFG, tmp_path / "resumed")
    assert len(second.history) == 10 and second.steps == 20
    assert [s.loss for s in second.history] == [s.loss for s in full.history[10:]]
    for (name, a), b in zip(
        straight.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert any(s.aux > 0 for s in full.history)  # aux-k and dead counters were exercised
    reloaded = Crosscoder.from_pretrained(tmp_path / "resumed" / "checkpoint" / "model")
    assert torch.equal(reloaded.W_enc_CL, straight.W_enc_CL)


def test_nan_batches_are_skipped_and_counted() -> None:
    batches = data(12)
    batches[3]["A"][5, 2] = float("nan")
    batches[7]["B"][0, 0] = float("inf")
    model = small_crosscoder()
    result = train(model, batches, TrainConfig(steps=10, warmup_steps=2, max_nan_batches=2))
    assert result.nan_batches == 2 and result.steps == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_nan_batches_stop_and_keep_the_last_good_checkpoint(tmp_path: Path) -> None:
    batches = data(12)
    for i in (6, 7):
        batches[i]["A"][0, 0] = float("nan")
    cfg = TrainConfig(steps=10, warmup_steps=2, max_nan_batches=1, checkpoint_every=5)
    with pytest.raises(TrainingError, match="2 batches held NaN"):
        train(small_crosscoder(), batches, cfg, tmp_path)
    saved = Crosscoder.from_pretrained(tmp_path / "checkpoint" / "model")
    assert all(torch.isfinite(t).all() for t in saved.state_dict().values())
    trainer = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert trainer["step"] == 5


def test_exhausted_batches_are_reported() -> None:
    result = train(small_crosscoder(), data(3), TrainConfig(steps=10, warmup_steps=0))
    assert result.exhausted and result.steps == 3


def test_schedules() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_start=0.5, lr_end_fraction=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 50) == pytest.approx(1.0) and lr_at(cfg, 75) == pytest.approx(0.55)
    assert lr_at(cfg, 99) == pytest.approx(0.118)
    anneal = TrainConfig(steps=100, k_start=40, k_anneal_steps=10)
    assert [k_at(anneal, 4, s) for s in (0, 5, 10, 50)] == [40, 22, 4, 4]


def test_k_annealing_changes_batch_l0() -> None:
    cfg = TrainConfig(steps=6, warmup_steps=0, k_start=12, k_anneal_steps=4)
    result = train(small_crosscoder(), data(6), cfg)
    assert [s.l0 for s in result.history] == [12.0, 10.0, 8.0, 6.0, 4.0, 4.0]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux CPU")
def test_torchrun_two_processes_give_the_one_process_loss_curve(tmp_path: Path) -> None:
    from tests.crosscoder.ddp_worker import run, tie_selection, tied_preacts
    from tests.crosscoder.test_batch_topk import reference

    single = run()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "tests.crosscoder.ddp_worker", str(tmp_path / "l.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "l.json").read_text())
    ddp = result["losses"]
    assert len(ddp) == len(single) == 12
    # BatchTopK on tied integer scores (the ties at the cut span both ranks): the two ranks
    # keep what one process keeps
    expected = reference(tied_preacts(), torch.ones(48), 200)
    assert result["ties"] == tie_selection() == expected
    # same arithmetic up to float summation order: measured max relative difference 1.5e-7
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-5, atol=1e-6)


def test_progress_bar_shows_fve_l0_dead(capsys: pytest.CaptureFixture[str]) -> None:
    train(small_crosscoder(), data(10), TrainConfig(steps=10, warmup_steps=2, progress=True))
    err = capsys.readouterr().err
    assert "crosscoder" in err and "fve=" in err and "l0=" in err and "dead=" in err
