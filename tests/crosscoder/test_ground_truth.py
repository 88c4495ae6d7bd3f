"""The key test: a crosscoder trained on planted features recovers them, their class and density."""

from __future__ import annotations

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.groundtruth import match_planted
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures
from crossdiff.crosscoder.train import train

PLANTED = PlantedConfig(
    d_models=(32, 32),
    n_shared=12,  # shared, an independent direction in each model
    n_shared_aligned=6,  # shared with one direction: the designated block can hold these
    n_exclusive=(12, 12),
    density_range=(0.03, 0.1),
    seed=0,
)


def test_planted_features_are_recovered_classified_and_their_density_measured() -> None:
    planted = PlantedFeatures(PLANTED)
    assert planted.classes.count("shared") == 18 and planted.classes.count("A_only") == 12
    expected_l0 = float(planted.densities.sum())  # 2.38 features per token: k = 2.4
    model = Crosscoder(
        CrosscoderConfig(models=("A", "B"), d_models=(32, 32), dict_size=96, k=2.4, n_shared=8)
    )
    cfg = TrainConfig(steps=1000, lr=3e-3, warmup_steps=50, dead_tokens=20_000, aux_k=16)
    result = train(model, planted.batches(256, 1000, seed=1), cfg)
    matches = match_planted(model, planted)
    n = len(matches)
    recovered = sum(m.cosine >= 0.9 for m in matches)
    right_class = sum(m.latent_class == m.planted_class for m in matches)
    density_ok = sum(abs(m.density / m.planted_density - 1) <= 0.2 for m in matches)
    report = [(m.planted_class, m.latent_class, round(m.cosine, 3), round(m.density, 4),
               round(m.planted_density, 4)) for m in matches]  # fmt: skip
    assert recovered >= 0.9 * n, report
    assert right_class >= 0.9 * n, report
    assert density_ok >= 0.9 * n, report
    assert result.history[-1].fve > 0.97 and 2.0 < expected_l0 < 3
