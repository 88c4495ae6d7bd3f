"""Latent classes live in the crosscoder's normalised space: rescaling one model's activations
before training changes neither the designated block's relative norm nor any latent's class."""

from __future__ import annotations

import functools

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.classes import latent_classes, relative_decoder_norm
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures
from crossdiff.crosscoder.train import train

PLANTED = PlantedConfig(
    d_models=(24, 24),
    n_shared=8,
    n_shared_aligned=4,
    n_exclusive=(10, 6),
    density_range=(0.03, 0.1),
    seed=1,
)
N_SHARED = 6


@functools.cache
def trained(scale_b: float) -> Crosscoder:
    """A crosscoder trained on the planted data with model B's activations times ``scale_b``."""
    planted = PlantedFeatures(PLANTED)
    batches = [{"A": b["A"], "B": b["B"] * scale_b} for b in planted.batches(256, 400, seed=2)]
    model = Crosscoder(
        CrosscoderConfig(
            models=("A", "B"), d_models=(24, 24), dict_size=64, k=2, n_shared=N_SHARED,
            sparsity_coeff=0.1,
        )
    )  # fmt: skip
    cfg = TrainConfig(steps=400, lr=3e-3, warmup_steps=20, dead_tokens=10_000, aux_k=12)
    train(model, batches, cfg)
    return model


@pytest.fixture(scope="module")
def unscaled() -> Crosscoder:
    return trained(1.0)


@pytest.mark.parametrize("scale_b", [10.0, 0.1])
def test_rescaling_one_model_changes_no_class(unscaled: Crosscoder, scale_b: float) -> None:
    scaled = trained(scale_b)
    r = relative_decoder_norm(scaled)
    assert torch.allclose(r[:N_SHARED], torch.full((N_SHARED,), 0.5, dtype=r.dtype), atol=1e-6)
    before, after = latent_classes(unscaled), latent_classes(scaled)
    assert before == after, [
        (i, b, a, round(float(relative_decoder_norm(unscaled)[i]), 3), round(float(r[i]), 3))
        for i, (b, a) in enumerate(zip(before, after, strict=True))
        if b != a
    ]
    # not trivially "all shared": the planted exclusive features give exclusive classes
    assert after.count("A_only") >= 5 and after.count("B_only") >= 3, after


def test_raw_units_would_have_moved_the_designated_block(unscaled: Crosscoder) -> None:
    """The check has teeth: in model B's raw units (norm / s_B) a 10× rescale puts the tied
    block at s_A / (s_A + s_B) ≈ 0.9 instead of 0.5, which is what the old definition reported."""
    scaled = trained(10.0)
    raw = scaled.decoder_norms().detach().double() / scaled.input_scale_M.double()
    r_raw = raw[:, 1] / raw.sum(dim=1)
    s_a, s_b = scaled.input_scale_M.double().tolist()
    assert torch.allclose(r_raw[:N_SHARED], torch.full((N_SHARED,), s_a / (s_a + s_b)).double())
    assert float(r_raw[:N_SHARED].min()) > 0.85
