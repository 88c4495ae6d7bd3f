"""The calibrated density rule on a hand-wired crosscoder: which firings count, which latents are
measured, and the statistics of each exclusive class against shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.density import (
    CALIBRATED,
    DESIGNATED_BLOCK,
    MEASURED,
    NEVER_FIRED,
    RAW,
    WEAK,
    DensityRule,
    compare,
    density_summary,
    mann_whitney,
    measure_density,
)
from crossdiff.errors import ConfigError

N_TOKENS = 1000
D = 8
# latent i reads coordinate i of model A; its decoder norms (into A, B) set its class
NORMS = {
    0: (1.0, 1.0),  # designated shared (tied decoder)
    1: (1.0, 1.0),  # designated shared
    2: (1.0, 1.0),  # emergent shared
    3: (1.0, 1.0),  # emergent shared
    4: (1.0, 1.0),  # emergent shared, faint: a weak latent
    5: (1.0, 0.0),  # A_only: strong on 5% of tokens, faint on 30%
    6: (1.0, 0.0),  # A_only: the same
    7: (0.0, 1.0),  # B_only: never fires
}


def wired_crosscoder() -> Crosscoder:
    """Latent i's pre-activation is x_A[i]; θ = 0; decoder norms from NORMS."""
    model = Crosscoder(
        CrosscoderConfig(models=("A", "B"), d_models=(D, D), dict_size=D, k=1, n_shared=2)
    )
    with torch.no_grad():
        model.W_enc_CL.zero_()
        model.W_enc_CL[:D, :] = torch.eye(D)
        model.b_enc_L.zero_()
        model.W_dec_shared_SD.copy_(torch.eye(D)[:2])
        free = torch.zeros(D - 2, 2 * D)
        for row, latent in enumerate(range(2, D)):
            a, b = NORMS[latent]
            free[row, latent] = a
            free[row, D + latent] = b
        model.W_dec_excl_XC.copy_(free)
        model.threshold.zero_()
    return model


def activations() -> torch.Tensor:
    """``[N, D]`` model A's activations: the firing pattern of each latent."""
    x = torch.zeros(N_TOKENS, D)
    t = torch.arange(N_TOKENS)
    x[:, 0] = (t % 2 == 0).float()  # designated: density 0.5
    x[:, 1] = (t % 2 == 1).float()
    x[:, 2] = (t % 5 == 0).float()  # shared: density 0.2
    x[:, 3] = (t % 5 == 1).float()
    x[:, 4] = 0.001 * (t % 100 == 0).float()  # weak: density 0.01, activation 0.001
    for latent, phase in ((5, 0), (6, 3)):
        strong = (t + phase) % 20 == 0  # 5%
        faint = ((t + phase) % 10 >= 6) & ~strong  # 40% of tokens, minus the strong ones
        x[:, latent] = strong.float() + 0.05 * faint.float()
    return x


def batches():
    x = activations()
    for start in range(0, N_TOKENS, 250):
        rows = slice(start, start + 250)
        domains = (torch.arange(N_TOKENS)[rows] % 2).to(torch.uint8)
        yield {"A": x[rows], "B": torch.zeros(250, D)}, {"domains": domains}


def test_the_calibrated_rule_counts_strong_firings_of_well_formed_latents() -> None:
    model = wired_crosscoder()
    m = measure_density(model, batches, ["even", "odd"], CALIBRATED)
    assert m.classes == ["shared"] * 5 + ["A_only"] * 2 + ["B_only"]
    assert m.status == [DESIGNATED_BLOCK] * 2 + [MEASURED] * 2 + [WEAK] + [MEASURED] * 2 + [
        NEVER_FIRED
    ]
    raw_a = float((activations()[:, 5] > 0).float().mean())
    assert m.raw_density_L[5] == pytest.approx(raw_a) and raw_a > 0.3
    np.testing.assert_allclose(m.density_L[[2, 3, 5, 6]], [0.2, 0.2, 0.05, 0.05])
    # latent 0 fires on the even tokens only
    assert m.domain_density["even"][0] == 1.0 and m.domain_density["odd"][0] == 0.0

    summary = density_summary(m, ["shared", "A_only", "B_only"])
    assert summary["median"] == {"shared": 0.2, "A_only": 0.05, "B_only": None}
    assert summary["designated_median"] == 0.5
    assert summary["latents"]["shared"] == {
        MEASURED: 2,
        DESIGNATED_BLOCK: 2,
        WEAK: 1,
        NEVER_FIRED: 0,
    }
    assert summary["latents"]["B_only"][NEVER_FIRED] == 1 and summary["never_fired"]["B_only"] == 1
    assert "emergent shared" in summary["baseline"]
    test = summary["tests"]["A_only_vs_shared"]
    assert test["ratio"] == pytest.approx(0.25)
    assert test["effect_size"] == -1.0 and test["n"] == [2, 2]
    assert test["p_less"] < test["p_greater"]
    assert summary["tests"]["B_only_vs_shared"]["p_value"] is None


def test_the_raw_rule_calls_the_faintly_firing_class_denser() -> None:
    """The negative control: every firing of every live latent, designated block included."""
    m = measure_density(wired_crosscoder(), batches, ["even", "odd"], RAW)
    assert all(s in (MEASURED, NEVER_FIRED) for s in m.status)
    summary = density_summary(m, ["shared", "A_only", "B_only"])
    assert summary["median"]["A_only"] > 0.3 > summary["median"]["shared"]
    assert summary["tests"]["A_only_vs_shared"]["ratio"] > 1
    assert summary["baseline"].startswith("raw")


def test_mann_whitney_gives_exact_one_and_two_sided_p_values() -> None:
    # x entirely below y: U = 0; exact P(U <= 0) = 1 / C(5, 2) = 0.1 under the null
    result = mann_whitney(np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0]))
    assert result["u"] == 0 and result["effect_size"] == -1.0
    assert result["p_less"] == pytest.approx(0.1)
    assert result["p_greater"] == pytest.approx(1.0)
    assert result["p_value"] == pytest.approx(0.2)
    empty = mann_whitney(np.array([]), np.array([1.0]))
    assert empty["p_less"] is None and empty["n"] == [0, 1]


def test_the_ratio_of_medians_has_a_bootstrap_interval_around_it() -> None:
    rng = np.random.default_rng(1)
    y = np.exp(rng.uniform(np.log(0.01), np.log(0.1), 400))
    x = 0.5 * np.exp(rng.uniform(np.log(0.01), np.log(0.1), 200))
    result = compare(x, y)
    assert result["ratio"] == pytest.approx(np.median(x) / np.median(y))
    lo, hi = result["ratio_ci"]
    assert lo < result["ratio"] < hi and lo < 0.5 < hi and hi < 0.8
    assert compare(x, y) == result  # a fixed seed: reproducible
    assert compare(x, np.array([]))["ratio"] is None


def test_a_rule_out_of_range_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="floor"):
        DensityRule(floor=1.5)
    with pytest.raises(ConfigError, match="weak"):
        DensityRule(weak=-0.1)
    assert "median of the latent's top 16" in CALIBRATED.describe()


def test_exclusive_density_scale_plants_an_ordering_on_the_same_draw() -> None:
    from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures

    base = PlantedConfig(n_shared=8, n_exclusive=(6, 6), density_range=(0.01, 0.04), seed=5)
    plain = PlantedFeatures(base)
    scaled = PlantedFeatures(
        PlantedConfig(**{**base.__dict__, "exclusive_density_scale": (0.5, 2.0)})
    )
    classes = np.asarray(plain.classes)
    ratio = (scaled.densities / plain.densities).numpy()
    np.testing.assert_allclose(ratio[classes == "shared"], 1.0)
    np.testing.assert_allclose(ratio[classes == "A_only"], 0.5)
    np.testing.assert_allclose(ratio[classes == "B_only"], 2.0)
    with pytest.raises(ConfigError, match="exclusive_density_scale has 1 entries"):
        PlantedConfig(exclusive_density_scale=(0.5,))
    with pytest.raises(ConfigError, match="model 'B'"):
        PlantedConfig(density_range=(0.1, 0.6), exclusive_density_scale=(1.0, 2.0))
