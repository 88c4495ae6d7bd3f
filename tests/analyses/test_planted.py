"""feature_classes and density against planted ground truth: class counts and density order."""

from __future__ import annotations

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures
from crossdiff.crosscoder.train import train
from crossdiff.density import CALIBRATED, measure_density
from crossdiff.latents import scan_batches
from crossdiff_analyses.density import density_summary
from crossdiff_analyses.feature_classes import classify, latent_scaling, scaling_summary

PLANTED = PlantedConfig(
    d_models=(32, 32), n_shared=12, n_shared_aligned=6, n_exclusive=(10, 14), seed=3
)
# The paper's ordering, planted: A-only features fire MORE often than shared, B-only LESS.
DENSITY_RANGES = {"shared": (0.03, 0.06), "A_only": (0.07, 0.12), "B_only": (0.012, 0.025)}
DOMAINS = ["even", "odd"]


def planted_features() -> PlantedFeatures:
    planted = PlantedFeatures(PLANTED)
    gen = torch.Generator().manual_seed(7)
    for f, label in enumerate(planted.classes):
        lo, hi = DENSITY_RANGES[label]
        planted.densities[f] = lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64)
    return planted


def heldout_batches(planted: PlantedFeatures, n_batches: int = 10, size: int = 2000):
    gen = torch.Generator().manual_seed(99)
    for b in range(n_batches):
        acts, _ = planted.sample(size, gen)
        yield acts, {"domains": torch.full((size,), b % 2, dtype=torch.uint8)}


@pytest.fixture(scope="module")
def trained() -> tuple[Crosscoder, PlantedFeatures]:
    planted = planted_features()
    model = Crosscoder(
        CrosscoderConfig(models=("A", "B"), d_models=(32, 32), dict_size=96, k=2.2, n_shared=8)
    )
    cfg = TrainConfig(steps=1000, lr=3e-3, warmup_steps=50, dead_tokens=20_000, aux_k=16)
    train(model, planted.batches(256, 1000, seed=1), cfg)
    return model, planted


@pytest.mark.slow
def test_feature_classes_recover_the_planted_class_counts(trained) -> None:
    model, planted = trained
    scan = scan_batches(model, heldout_batches(planted), DOMAINS, top_n=1)
    summary = classify(model, scan.fires_L)
    planted_counts = {c: planted.classes.count(c) for c in ("shared", "A_only", "B_only")}
    counts = summary["counts"]
    # every exclusive feature is one latent of the right class, and no shared one leaks in
    assert counts["A_only"] == planted_counts["A_only"], summary
    assert counts["B_only"] == planted_counts["B_only"], summary
    # 96 latents for 42 features: a shared feature may also own a duplicate or a split latent
    assert planted_counts["shared"] <= counts["shared"] <= 1.25 * planted_counts["shared"]
    assert summary["dead"] == 96 - sum(counts.values())
    assert summary["designated_shared"] == {"total": 8, "classified_shared": 8}
    scaling = scaling_summary(model, latent_scaling(model, heldout_batches(planted)), scan.fires_L)
    # truly exclusive planted features: latent scaling does not flag them as shared
    assert scaling["A_only"]["flagged_as_shared"] == 0
    assert scaling["B_only"]["flagged_as_shared"] == 0


@pytest.mark.slow
def test_density_recovers_the_planted_order_and_tests_it(trained) -> None:
    model, planted = trained
    measurement = measure_density(
        model, lambda: heldout_batches(planted), DOMAINS, CALIBRATED, latent_classes(model)
    )
    summary = density_summary(measurement)
    median = summary["median"]
    assert median["B_only"] < median["shared"] < median["A_only"]
    for label in ("A_only", "B_only"):
        lo, hi = DENSITY_RANGES[label]
        assert lo * 0.8 <= median[label] <= hi * 1.2
    tests = summary["tests"]
    assert tests["A_only_vs_shared"]["effect_size"] > 0.5
    assert tests["B_only_vs_shared"]["effect_size"] < -0.5
    assert tests["A_only_vs_shared"]["p_value"] < 1e-3
    assert tests["B_only_vs_shared"]["p_value"] < 1e-3
    assert tests["A_only_vs_shared"]["p_greater"] < 1e-3 < tests["A_only_vs_shared"]["p_less"]
    assert tests["B_only_vs_shared"]["p_less"] < 1e-3 < tests["B_only_vs_shared"]["p_greater"]
    assert tests["A_only_vs_shared"]["ratio"] > 1 > tests["B_only_vs_shared"]["ratio"]
    assert set(summary["per_domain_median"]) == set(DOMAINS)
    assert summary["tokens"] == 20_000


def test_dashboard_windows_stop_at_the_end_of_a_sequence() -> None:
    """A top activation on a sequence's last position: the window may not run past it."""
    from crossdiff.latents import LatentScan
    from crossdiff_analyses.dashboards import DashboardSettings, context_windows

    top_rows = torch.tensor([[0, 1]])  # latent 0's top row is row 0, latent 1's is row 1
    meta = {"sequences": torch.tensor([4, 5]), "positions": torch.tensor([15, 3])}
    scan = LatentScan(2, torch.ones(2, dtype=torch.long), {}, {}, torch.ones(1, 2), top_rows, meta)
    windows = context_windows(scan, {"shared": [0, 1]}, DashboardSettings(window=4, after=3), 16)
    assert windows[0] == [(4, [11, 12, 13, 14, 15])]
    assert windows[1] == [(5, [0, 1, 2, 3, 4, 5, 6])]
