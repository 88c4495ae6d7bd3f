"""The density verdicts calibrated on planted truth, through the whole chain real runs use.

For a :class:`CalibrationSetting` (planted features whose exclusive classes are planted sparser,
denser or as dense as the shared ones, a crosscoder shape and its training) and a seed,
:func:`run_calibration` trains the crosscoder, classes its latents
(:func:`crossdiff.crosscoder.classes.latent_classes`), measures the densities and compares the
classes exactly as the ``density`` analysis does (:func:`crossdiff.density.measure_density`,
:func:`crossdiff.density.density_summary`), and scores the result against the planted truth:
class precision and recall (:func:`crossdiff.crosscoder.groundtruth.score_classes`) and, per
exclusive class, whether the planted ordering is recovered with the right sign and significance.

The verdict on a planted ordering is the claim's own test at ``alpha`` (0.05): "sparser" holds
when ``p_less`` < alpha, "denser" when ``p_greater`` < alpha (one-sided: the claim has a
direction); a planted "no difference" is recovered when the two-sided ``p_value`` ≥ alpha. The
ratio's truth is the ratio of the medians of the planted densities (class / shared) of the
features actually drawn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.config import CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.evaluate import evaluate
from crossdiff.crosscoder.groundtruth import score_classes
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.synthetic import SHARED, PlantedConfig, PlantedFeatures, only
from crossdiff.crosscoder.train import train
from crossdiff.density import CALIBRATED, RAW, DensityRule, density_summary, measure_density
from crossdiff.errors import ConfigError

SPARSER, DENSER, NO_DIFFERENCE = "sparser", "denser", "no difference"
"""The planted orderings of an exclusive class against the shared class."""
DOMAINS = ["even", "odd"]
"""Held-out batches alternate between two nominal domains (the per-domain medians get data)."""


@dataclass(frozen=True)
class CalibrationSetting:
    """A planted benchmark case: what is planted, the crosscoder and its training."""

    name: str
    planted: PlantedConfig
    """Its ``exclusive_density_scale`` plants the orderings (its seed is replaced per run)."""
    dict_size: int
    k: float
    n_shared: int = 0
    """Designated shared latents (tied decoder)."""
    sparsity_coeff: float = 0.0
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-2
    heldout_tokens: int = 20_000
    heldout_batch: int = 4_000

    def __post_init__(self) -> None:
        scale = self.planted.exclusive_density_scale
        if len(scale) != len(self.planted.models):
            raise ConfigError(
                f"setting {self.name!r} plants no ordering: set the planted config's "
                f"exclusive_density_scale (one factor per model of {list(self.planted.models)})"
            )
        if self.heldout_tokens < 1 or self.heldout_batch < 1:
            raise ConfigError("heldout_tokens and heldout_batch must be positive")

    def crosscoder_config(self, seed: int) -> CrosscoderConfig:
        """The crosscoder this setting trains (weights seeded by ``seed``)."""
        return CrosscoderConfig(
            models=tuple(self.planted.models),
            d_models=tuple(self.planted.d_models),
            dict_size=self.dict_size,
            k=self.k,
            n_shared=self.n_shared,
            sparsity_coeff=self.sparsity_coeff,
            seed=seed,
        )

    def train_config(self) -> TrainConfig:
        """How it trains: as the crosscoder stage does (warm-up min(100, steps/10), aux-k on
        d_model/2 dead latents), latents dead after ~100 steps without firing (the quickstart's)."""
        return TrainConfig(
            steps=self.steps,
            lr=self.lr,
            warmup_steps=min(100, self.steps // 10),
            dead_tokens=100 * self.batch_size,
        )


def expected_ordering(scale: float) -> str:
    """The ordering a density factor plants: below 1 sparser, above 1 denser, 1 none."""
    return SPARSER if scale < 1 else DENSER if scale > 1 else NO_DIFFERENCE


def recovered(test: dict[str, Any], expected: str, alpha: float = 0.05) -> bool:
    """Whether a ``<class>_vs_shared`` test recovers the planted ``expected`` ordering."""
    if test["p_value"] is None:
        return False
    if expected == SPARSER:
        return test["p_less"] < alpha
    if expected == DENSER:
        return test["p_greater"] < alpha
    return test["p_value"] >= alpha


@dataclass
class OrderingResult:
    """One exclusive class: its planted ordering against shared and what was measured."""

    label: str
    expected: str
    planted_scale: float
    """The factor planted on the class's densities."""
    planted_ratio: float
    """Median planted density of the class's features / of the shared features (this draw)."""
    test: dict[str, Any]
    """The ``density`` summary's ``<label>_vs_shared`` entry (calibrated rule)."""
    recovered: bool
    raw_test: dict[str, Any] = field(default_factory=dict)
    """The same test under the uncalibrated rule (:data:`crossdiff.density.RAW`)."""
    raw_recovered: bool = False

    @property
    def ratio(self) -> float | None:
        """Measured ratio of the medians, class / shared (calibrated rule)."""
        return self.test.get("ratio")

    def ratio_error(self) -> float | None:
        """max(measured/planted, planted/measured) of the ratio: 1 is exact."""
        if not self.ratio:
            return None
        q = self.ratio / self.planted_ratio
        return max(q, 1 / q)


@dataclass
class CalibrationResult:
    """One setting at one seed."""

    setting: str
    seed: int
    data_l0: float
    """Planted features active per token on average (Σ densities)."""
    k: float
    n_features: int
    dict_size: int
    fve: float
    """Pooled held-out FVE."""
    precision: dict[str, float]
    recall: dict[str, float]
    orderings: list[OrderingResult]
    summary: dict[str, Any]
    """The ``density`` summary (calibrated rule)."""
    seconds: float
    """Training time."""


def heldout_batches(
    planted: PlantedFeatures, setting: CalibrationSetting, seed: int
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Replayable held-out ``(activations, metadata)`` batches, domains alternating."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    left, index = setting.heldout_tokens, 0
    while left > 0:
        size = min(setting.heldout_batch, left)
        acts, _ = planted.sample(size, gen)
        yield acts, {"domains": torch.full((size,), index % len(DOMAINS), dtype=torch.uint8)}
        left -= size
        index += 1


def planted_ratio(planted: PlantedFeatures, label: str) -> float:
    """Median planted density of ``label``'s features over the shared features' median."""
    classes = np.asarray(planted.classes)
    density = planted.densities.numpy()
    return float(np.median(density[classes == label]) / np.median(density[classes == SHARED]))


def run_calibration(
    setting: CalibrationSetting,
    seed: int,
    rule: DensityRule = CALIBRATED,
    alpha: float = 0.05,
    compare_raw: bool = True,
) -> CalibrationResult:
    """Train, class, measure and judge one setting at ``seed`` (see the module docstring)."""
    planted = PlantedFeatures(replace(setting.planted, seed=seed))
    model = Crosscoder(setting.crosscoder_config(seed))
    start = time.perf_counter()
    train(
        model,
        planted.batches(setting.batch_size, setting.steps, seed=1_000 + seed),
        setting.train_config(),
    )
    seconds = time.perf_counter() - start
    classes = latent_classes(model)
    scores = score_classes(model, planted, n_tokens=setting.heldout_tokens, seed=20_000 + seed)
    labels = [SHARED, *(only(m) for m in model.cfg.models)]

    def batches():
        return heldout_batches(planted, setting, seed)

    summary = density_summary(measure_density(model, batches, DOMAINS, rule, classes), labels)
    raw = (
        density_summary(measure_density(model, batches, DOMAINS, RAW, classes), labels)
        if compare_raw
        else None
    )
    orderings = []
    for model_name, scale in zip(
        model.cfg.models, setting.planted.exclusive_density_scale, strict=True
    ):
        label = only(model_name)
        expected = expected_ordering(scale)
        test = summary["tests"][f"{label}_vs_shared"]
        result = OrderingResult(
            label,
            expected,
            scale,
            planted_ratio(planted, label),
            test,
            recovered(test, expected, alpha),
        )
        if raw is not None:
            result.raw_test = raw["tests"][f"{label}_vs_shared"]
            result.raw_recovered = recovered(result.raw_test, expected, alpha)
        orderings.append(result)
    fve = evaluate(model, (acts for acts, _ in batches())).fve_pooled
    return CalibrationResult(
        setting.name,
        seed,
        float(planted.densities.sum()),
        setting.k,
        planted.n_features,
        setting.dict_size,
        fve,
        scores.precision,
        scores.recall,
        orderings,
        summary,
        seconds,
    )


def small_setting(
    scale: tuple[float, float], name: str = "small", **crosscoder: Any
) -> CalibrationSetting:
    """The setting the tests run (about 4 s of CPU per seed): 64 planted features in two models
    of width 24 (32 shared, 16 + 16 exclusive; shared densities log-uniform in [0.005, 0.05],
    the exclusive ones × ``scale``; data L0 ≈ 1.0–1.5), a dictionary of 128 (2× the features),
    k = 5 (≥ 3× the data's L0), a designated block of 8, λ = 1.0, 600 steps of 256 tokens at a
    learning rate of 0.01; ``crosscoder`` overrides any of these."""
    planted = PlantedConfig(
        d_models=(24, 24),
        n_shared=32,
        n_exclusive=(16, 16),
        density_range=(0.005, 0.05),
        exclusive_density_scale=scale,
    )
    options = {
        "dict_size": 128,
        "k": 5,
        "n_shared": 8,
        "sparsity_coeff": 1.0,
        "steps": 600,
        "batch_size": 256,
        "lr": 1e-2,
    }
    return CalibrationSetting(name, planted, **(options | crosscoder))
