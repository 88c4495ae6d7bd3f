"""The crosscoder on every device present: training, checkpoint and resume, evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, TrainConfig
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.evaluate import evaluate
from crossdiff.crosscoder.train import train
from tests.devices import DEVICES

from .conftest import planted, small_crosscoder


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("device", DEVICES)
def test_train_resume_and_evaluate_on_device(device: str, dtype: str, tmp_path: Path) -> None:
    source = planted(d=(12, 12), noise=0.05)
    batches = list(source.batches(128, 60, seed=0))  # on the CPU, as a store yields them
    held_out = list(source.batches(200, 3, seed=9))
    cfg = TrainConfig(steps=60, lr=3e-3, warmup_steps=5, dead_tokens=1_000, checkpoint_every=30)

    reference = small_crosscoder()
    train(reference, batches, cfg)
    expected = evaluate(reference, held_out)

    model = small_crosscoder(dtype=dtype).to(device)
    train(model, batches[:30], cfg, tmp_path)  # stops after 30 steps: batches run out
    resumed = small_crosscoder(dtype=dtype).to(device)
    result = train(resumed, batches, cfg, tmp_path)
    assert result.steps == 60
    assert all(p.device.type == device for p in resumed.parameters())
    got = evaluate(resumed, held_out)
    assert got.n_tokens == expected.n_tokens
    exact = device == "cpu" and dtype == "float32"
    tolerance = 1e-9 if exact else 2e-2  # other kernels or precision, other float order
    for name in ("A", "B"):
        assert got.fve[name] == pytest.approx(expected.fve[name], abs=tolerance)
    assert got.fve_pooled > 0.5
    on_cpu = Crosscoder.from_pretrained(resumed.save_pretrained(tmp_path / "saved"))
    assert latent_classes(on_cpu) == latent_classes(resumed)
    assert torch.equal(on_cpu.W_enc_CL, resumed.W_enc_CL.cpu())
    assert on_cpu.W_enc_CL.dtype == getattr(torch, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_ce_recovered_with_the_crosscoder_on_device_and_the_models_on_the_cpu(device: str) -> None:
    from crossdiff.crosscoder.evaluate import ce_recovered

    from .test_evaluate import TinyAdapter, TinyLM

    adapters = {"A": TinyAdapter(TinyLM(40, 12, seed=0)), "B": TinyAdapter(TinyLM(40, 12, seed=1))}
    tokens = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    sites = {"A": "0.mlp_out", "B": "0.mlp_out"}
    reference = small_crosscoder()
    reference.threshold.fill_(0.05)
    expected = ce_recovered(reference, adapters, sites, tokens, first_position=1)
    moved = small_crosscoder().to(device)
    moved.load_state_dict(reference.state_dict())
    got = ce_recovered(moved, adapters, sites, tokens, first_position=1)
    for name in sites:
        assert got[name].ce_spliced == pytest.approx(expected[name].ce_spliced, abs=1e-4)
