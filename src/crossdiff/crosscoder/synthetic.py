"""Planted-feature activations for two or more "models": ground truth for crosscoders.

Every feature has a class (``shared`` or ``<model>_only``), a density p_f (probability of firing
on a token), and a random unit direction u_f^m in the space of each model it lives in. A token's
activations are x_m = Σ_f a_f·u_f^m (+ optional Gaussian noise) with a_f ~ Uniform[lo, hi] when
the feature fires, the same a_f in every model for a shared feature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from crossdiff.errors import ConfigError

SHARED = "shared"


def only(model: str) -> str:
    """The class name of features that live in ``model`` alone."""
    return f"{model}_only"


@dataclass(frozen=True)
class PlantedConfig:
    """What to plant."""

    models: tuple[str, ...] = ("A", "B")
    d_models: tuple[int, ...] = (64, 64)
    n_shared: int = 16
    """Shared features with an independent direction in each model."""
    n_shared_aligned: int = 0
    """Shared features with the SAME direction in every model (needs equal d_models)."""
    n_exclusive: tuple[int, ...] = (16, 16)
    """Features living in one model only, per model."""
    density_range: tuple[float, float] = (0.02, 0.08)
    """Densities are drawn log-uniformly from this range."""
    magnitude_range: tuple[float, float] = (0.5, 1.5)
    """Activation of a firing feature, uniform in this range."""
    noise: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to every coordinate."""
    seed: int = 0

    def __post_init__(self) -> None:
        n = len(self.models)
        if len(self.d_models) != n or len(self.n_exclusive) != n:
            raise ConfigError("models, d_models and n_exclusive must have the same length")
        if self.n_shared_aligned and len(set(self.d_models)) != 1:
            raise ConfigError("aligned shared features need equal d_models")
        lo, hi = self.density_range
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"density_range must satisfy 0 < lo <= hi <= 1, got {lo, hi}")


class PlantedFeatures:
    """A sampled set of planted features and a sampler of activations from them."""

    def __init__(self, cfg: PlantedConfig) -> None:
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        classes = [SHARED] * (cfg.n_shared + cfg.n_shared_aligned)
        for model, n in zip(cfg.models, cfg.n_exclusive, strict=True):
            classes += [only(model)] * n
        self.classes: list[str] = classes
        """Class of each feature: ``shared`` or ``<model>_only``."""
        n_f = len(classes)
        lo, hi = cfg.density_range
        u = torch.rand(n_f, generator=gen, dtype=torch.float64)
        self.densities = torch.exp(
            torch.log(torch.tensor(lo)) + u * torch.log(torch.tensor(hi / lo))
        )
        """``[F]`` firing probability of each feature."""
        self.directions: dict[str, torch.Tensor] = {}
        """model -> ``[F, D_m]`` unit directions, zero rows for features absent from the model."""
        aligned = None
        for model, d in zip(cfg.models, cfg.d_models, strict=True):
            dirs = torch.randn(n_f, d, generator=gen, dtype=torch.float64)
            if cfg.n_shared_aligned:
                if aligned is None:
                    aligned = dirs[cfg.n_shared : cfg.n_shared + cfg.n_shared_aligned].clone()
                dirs[cfg.n_shared : cfg.n_shared + cfg.n_shared_aligned] = aligned
            present = torch.tensor([c in (SHARED, only(model)) for c in classes])
            dirs = dirs / dirs.norm(dim=1, keepdim=True)
            self.directions[model] = dirs * present[:, None]

    @property
    def n_features(self) -> int:
        """Number of planted features ``F``."""
        return len(self.classes)

    def sample(
        self, n_tokens: int, generator: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``n_tokens`` of float32 activations per model and the ``[n, F]`` coefficients."""
        fires = torch.rand(n_tokens, self.n_features, generator=generator, dtype=torch.float64)
        fires = fires < self.densities
        lo, hi = self.cfg.magnitude_range
        mags = lo + (hi - lo) * torch.rand(fires.shape, generator=generator, dtype=torch.float64)
        coeffs = mags * fires
        batch = {}
        for model, dirs in self.directions.items():
            x = coeffs @ dirs
            if self.cfg.noise:
                x += self.cfg.noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)
            batch[model] = x.float()
        return batch, coeffs

    def batches(
        self, batch_size: int, n_batches: int, seed: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """A replayable stream: the same ``seed`` gives the same batches."""
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n_batches):
            yield self.sample(batch_size, gen)[0]
