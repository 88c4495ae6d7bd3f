"""Bad configurations and bad batches fail early with errors that say what is wrong."""

from __future__ import annotations

import pytest
import torch

from crossdiff.crosscoder import CrosscoderConfig, TrainConfig
from crossdiff.errors import ConfigError

from .conftest import small_crosscoder


def base(**kw: object) -> dict:
    cfg = {"models": ("a", "b"), "d_models": (8, 8), "dict_size": 32, "k": 4}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k": 32}, "k must satisfy"),
        ({"k": 40}, "k must satisfy"),
        ({"k": 0}, "k must satisfy"),
        ({"n_shared": 33}, "shared block"),
        ({"n_shared": 2, "d_models": (8, 16)}, "equal d_models"),
        ({"models": ("a",), "d_models": (8,)}, "at least two models"),
        ({"models": ("a", "a")}, "distinct"),
        ({"d_models": (8,)}, "d_models has 1 entries"),
        ({"sparsity_coeff": -1.0}, "sparsity_coeff"),
    ],
)
def test_bad_crosscoder_configs(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CrosscoderConfig(**base(**overrides))


def test_different_widths_without_shared_block_are_fine() -> None:
    cfg = CrosscoderConfig(**base(d_models=(8, 24)))
    assert cfg.d_total == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"decay_start": 1.5}, "decay_start"),
        ({"kernels": "fast"}, "kernels"),
        ({"threshold_decay": 1.0}, "threshold_decay"),
        ({"aux_coeff": -0.5}, "aux_coeff must be >= 0, got -0.5"),
        ({"aux_coeff": float("nan")}, "aux_coeff"),
    ],
)
def test_bad_train_configs(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"steps": 10, **overrides})


def test_batch_without_a_named_model_is_refused() -> None:
    model = small_crosscoder()
    with pytest.raises(ConfigError, match=r"no activations for model\(s\) \['B'\]"):
        model({"A": torch.randn(4, 12), "C": torch.randn(4, 12)})


def test_batch_of_wrong_width_is_refused() -> None:
    model = small_crosscoder()
    with pytest.raises(ConfigError, match=r"'B' must have shape \[batch, 12\]"):
        model({"A": torch.randn(4, 12), "B": torch.randn(4, 13)})
