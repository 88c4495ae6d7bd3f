"""Planted-feature activations for two or more "models": ground truth for crosscoders.

Every feature has a class (``shared``, ``<model>_only`` or a model subset ``A+B``), a density
p_f (probability of firing on a token), and a random unit direction u_f^m in the space of each
model it lives in. A token's activations are x_m = Σ_f a_f·c_f^m·u_f^m (+ optional Gaussian
noise) with a_f ~ Uniform[lo, hi] when the feature fires, the same a_f in every model it lives
in, and c_f^m a per-model factor (1 except for weak-shared features). Hard cases: shared features
much weaker in one model, exclusive features denser than shared ones, correlated pairs of
exclusive features.
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


def subset_class(members: list[str] | tuple[str, ...], models: tuple[str, ...]) -> str:
    """The class of features living in ``members`` among ``models``: ``shared`` (all),
    ``<m>_only`` (one) or the members joined by ``+`` in the order of ``models``."""
    unknown = [m for m in members if m not in models]
    if unknown:
        raise ConfigError(
            f"model subset {list(members)} names unknown model {unknown[0]!r}; "
            f"the models are {list(models)}"
        )
    if not members:
        raise ConfigError(f"a model subset must name at least one of {list(models)}")
    ordered = [m for m in models if m in members]
    if len(ordered) == len(models):
        return SHARED
    if len(ordered) == 1:
        return only(ordered[0])
    return "+".join(ordered)


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
    exclusive_density_range: tuple[float, float] | None = None
    """Densities of the exclusive, paired and subset features (None: ``density_range``);
    above it, exclusive features fire more often than shared ones (a hard case)."""
    n_weak_shared: int = 0
    """Shared features whose magnitude in the LAST model is ``weak_scale`` × the first's (hard:
    an L1-style penalty tends to zero the weak decoder, "complete shrinkage")."""
    weak_scale: float = 0.2
    """Magnitude ratio of the weak-shared features in the last model."""
    n_correlated_pairs: int = 0
    """Pairs of exclusive features (one of the first model, one of the second) that tend to fire
    together (hard: they invite one shared latent, "latent decoupling" in reverse)."""
    pair_correlation: float = 0.7
    """Chance that a pair's second feature copies the first's firing (else it fires alone)."""
    subsets: tuple[tuple[tuple[str, ...], int], ...] = ()
    """(model subset, count): features living in exactly those models (for three or more)."""
    exclusive_density_scale: tuple[float, ...] = ()
    """Per model (empty: none): the densities drawn for that model's ``n_exclusive`` features
    are multiplied by this factor, so an ordering against the shared features is planted with
    the same shape of distribution: 0.5 is "half as dense", 2 "twice", 1 "no difference"
    (with ``exclusive_density_range`` unset, the medians' ratio is the factor)."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "subsets", tuple((tuple(members), int(n)) for members, n in self.subsets)
        )
        n = len(self.models)
        if len(self.d_models) != n or len(self.n_exclusive) != n:
            raise ConfigError("models, d_models and n_exclusive must have the same length")
        for members, _ in self.subsets:
            subset_class(members, tuple(self.models))  # names every unknown model
        if self.n_correlated_pairs and n < 2:
            raise ConfigError("correlated pairs need two models")
        if self.n_shared_aligned and len(set(self.d_models)) != 1:
            raise ConfigError("aligned shared features need equal d_models")
        for lo, hi in (self.density_range, self.exclusive_density_range or self.density_range):
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"density ranges must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
        scale = tuple(float(x) for x in self.exclusive_density_scale)
        object.__setattr__(self, "exclusive_density_scale", scale)
        if scale and len(scale) != n:
            raise ConfigError(
                f"exclusive_density_scale has {len(scale)} entries for {n} models "
                f"{list(self.models)}, got {list(scale)}"
            )
        hi = (self.exclusive_density_range or self.density_range)[1]
        for model, factor in zip(self.models, scale, strict=False):
            if not 0 < factor * hi <= 1:
                raise ConfigError(
                    f"exclusive_density_scale of model {model!r} is {factor}: it must be > 0 and "
                    f"keep the densest exclusive feature ({hi} x {factor}) at most 1"
                )


class PlantedFeatures:
    """A sampled set of planted features and a sampler of activations from them."""

    def __init__(self, cfg: PlantedConfig) -> None:
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        models = tuple(cfg.models)
        members: list[tuple[str, ...]] = [models] * (
            cfg.n_shared + cfg.n_shared_aligned + cfg.n_weak_shared
        )
        for model, n in zip(models, cfg.n_exclusive, strict=True):
            members += [(model,)] * n
        self.pairs: list[tuple[int, int]] = []
        """(first, second) feature indices of each correlated exclusive pair."""
        for _ in range(cfg.n_correlated_pairs):
            self.pairs.append((len(members), len(members) + 1))
            members += [(models[0],), (models[1],)]
        for subset, n in cfg.subsets:
            members += [tuple(m for m in models if m in subset)] * n
        self.members: list[tuple[str, ...]] = members
        """The models each feature lives in."""
        self.classes: list[str] = [subset_class(m, models) for m in members]
        """Class of each feature: ``shared``, ``<model>_only`` or ``A+B`` (a model subset)."""
        n_f = len(members)
        n_common = cfg.n_shared + cfg.n_shared_aligned + cfg.n_weak_shared
        u = torch.rand(n_f, generator=gen, dtype=torch.float64)
        lo_hi = torch.tensor(
            [cfg.density_range] * n_common
            + [cfg.exclusive_density_range or cfg.density_range] * (n_f - n_common),
            dtype=torch.float64,
        ).reshape(n_f, 2)
        lo, hi = lo_hi[:, 0], lo_hi[:, 1]
        self.densities = torch.exp(torch.log(lo) + u * torch.log(hi / lo))
        """``[F]`` firing probability of each feature."""
        start = n_common
        for factor, n in zip(cfg.exclusive_density_scale, cfg.n_exclusive, strict=False):
            self.densities[start : start + n] *= factor
            start += n
        for first, second in self.pairs:
            self.densities[second] = self.densities[first]
        self.scales: dict[str, torch.Tensor] = {
            m: torch.ones(n_f, dtype=torch.float64) for m in models
        }
        """model -> ``[F]`` magnitude factor of each feature in that model (weak-shared < 1)."""
        weak = slice(cfg.n_shared + cfg.n_shared_aligned, n_common)
        self.scales[models[-1]][weak] = cfg.weak_scale
        self.directions: dict[str, torch.Tensor] = {}
        """model -> ``[F, D_m]`` unit directions, zero rows for features absent from the model."""
        aligned = None
        for model, d in zip(models, cfg.d_models, strict=True):
            dirs = torch.randn(n_f, d, generator=gen, dtype=torch.float64)
            if cfg.n_shared_aligned:
                if aligned is None:
                    aligned = dirs[cfg.n_shared : cfg.n_shared + cfg.n_shared_aligned].clone()
                dirs[cfg.n_shared : cfg.n_shared + cfg.n_shared_aligned] = aligned
            present = torch.tensor([model in m for m in members])
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
        if self.pairs:
            copy = torch.rand(n_tokens, len(self.pairs), generator=generator, dtype=torch.float64)
            copy = copy < self.cfg.pair_correlation
            first = torch.tensor([a for a, _ in self.pairs])
            second = torch.tensor([b for _, b in self.pairs])
            fires[:, second] = torch.where(copy, fires[:, first], fires[:, second])
        lo, hi = self.cfg.magnitude_range
        mags = lo + (hi - lo) * torch.rand(fires.shape, generator=generator, dtype=torch.float64)
        coeffs = mags * fires
        batch = {}
        for model, dirs in self.directions.items():
            x = (coeffs * self.scales[model]) @ dirs
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
