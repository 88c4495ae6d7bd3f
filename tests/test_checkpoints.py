"""Checkpoints hold no pickle: round trips, named errors, and a malicious pickle never runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from crossdiff.checkpoints import (
    CheckpointError,
    convert_legacy_checkpoint,
    load_optimizer_,
    save_optimizer,
)
from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.train import train

ROOT = Path(__file__).resolve().parents[1]


class _Exploit:
    """Unpickling this creates ``marker``: proof that the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    torch.save({"optimizer": _Exploit(marker), "step": 1}, path)


def small() -> Crosscoder:
    return Crosscoder(CrosscoderConfig(models=("A", "B"), d_models=(8, 8), dict_size=32, k=2))


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"A": torch.randn(64, 8, generator=g), "B": torch.randn(64, 8, generator=g)}
            for _ in range(n)]  # fmt: skip


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    model = small()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, batches(3), TrainConfig(steps=3, warmup_steps=0))  # moments worth keeping
    model.W_enc_CL.grad = torch.randn_like(model.W_enc_CL)
    optimizer.step()
    save_optimizer(tmp_path, optimizer)
    assert not list(tmp_path.glob("*.pt"))
    again = torch.optim.Adam(small().parameters(), lr=5.0)
    load_optimizer_(tmp_path, again)
    a, b = optimizer.state_dict(), again.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-3
    for i, state in a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["state"][i][name]), (i, name)


def test_crosscoder_resume_refuses_a_malicious_pickle_without_running_it(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=2, warmup_steps=0)
    train(small(), batches(2), cfg, tmp_path)
    marker = tmp_path / "pwned"
    write_malicious_pickle(tmp_path / "checkpoint" / "trainer.pt", marker)
    with pytest.raises(CheckpointError, match=r"trainer\.pt.*pickle.*python -m crossdiff"):
        train(small(), batches(4), TrainConfig(steps=4, warmup_steps=0), tmp_path)
    assert not marker.exists()


def test_malicious_bytes_where_safetensors_are_expected_are_refused(tmp_path: Path) -> None:
    train(small(), batches(2), TrainConfig(steps=2, warmup_steps=0), tmp_path)
    marker = tmp_path / "pwned"
    target = tmp_path / "checkpoint" / "optimizer.safetensors"
    write_malicious_pickle(target, marker)
    with pytest.raises(CheckpointError, match=re.escape(str(target))):
        train(small(), batches(4), TrainConfig(steps=4, warmup_steps=0), tmp_path)
    assert not marker.exists()


def test_the_converter_refuses_code_and_converts_a_genuine_old_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    bad.mkdir()
    write_malicious_pickle(bad / "trainer.pt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        convert_legacy_checkpoint(bad)
    assert not marker.exists() and (bad / "trainer.pt").exists()

    # an old-format crosscoder checkpoint: resume from it after conversion equals no interruption
    straight = small()
    train(straight, batches(6), TrainConfig(steps=6, warmup_steps=0))
    run = tmp_path / "run"
    train(small(), batches(6), TrainConfig(steps=3, warmup_steps=0), run)
    ckpt = run / "checkpoint"
    from crossdiff.checkpoints import load_json, load_tensors

    state = load_json(ckpt / "trainer_state.json")
    optimizer = torch.optim.Adam(small().parameters())
    load_optimizer_(ckpt, optimizer)
    torch.save(
        {"optimizer": optimizer.state_dict(), **{k: state[k] for k in
         ("step", "batches_consumed", "nan_batches")}, "train_config": state["train_config"],
         "tokens_since_fired": load_tensors(ckpt / "trainer.safetensors")["tokens_since_fired"]},
        ckpt / "trainer.pt",
    )  # fmt: skip
    for name in ("optimizer.safetensors", "optimizer.json", "trainer.safetensors"):
        (ckpt / name).unlink()
    (ckpt / "trainer_state.json").unlink()
    assert convert_legacy_checkpoint(ckpt) == ["trainer.pt"]
    resumed = small()
    train(resumed, batches(6), TrainConfig(steps=6, warmup_steps=0), run)
    for name, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name


def test_no_pickle_anywhere_in_the_package() -> None:
    """Every torch.load passes weights_only=True; nothing imports pickle or calls torch.save."""
    offenders = []
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
        if re.search(r"^\s*import (c?pickle|dill)|torch\.save\(", text, re.MULTILINE):
            offenders.append(f"{path}: pickle or torch.save")
    assert not offenders, offenders
