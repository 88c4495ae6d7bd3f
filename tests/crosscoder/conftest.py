"""Crosscoder test helpers: one torch thread (the 2 cores are shared), small planted data."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small tensors run fastest (and least disturbed by neighbours) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_crosscoder(**overrides: object) -> Crosscoder:
    """A 2-model crosscoder of widths 12 and 12, 48 latents, k 4, 6 shared latents."""
    cfg = {
        "models": ("A", "B"),
        "d_models": (12, 12),
        "dict_size": 48,
        "k": 4,
        "n_shared": 6,
        "seed": 3,
    }
    cfg.update(overrides)
    return Crosscoder(CrosscoderConfig(**cfg))


def planted(d: tuple[int, int] = (12, 12), noise: float = 0.0, seed: int = 0) -> PlantedFeatures:
    """Planted features in two small models."""
    return PlantedFeatures(
        PlantedConfig(
            d_models=d,
            n_shared=6,
            n_shared_aligned=2 if d[0] == d[1] else 0,
            n_exclusive=(6, 6),
            density_range=(0.05, 0.2),
            noise=noise,
            seed=seed,
        )
    )
