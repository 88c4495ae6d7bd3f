"""Crosscoder variants: dedicated partitions, several sites per model, three or more models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.classes import (
    class_table,
    latent_classes,
    latent_origins,
    latent_subsets,
    site_classes,
    subsets_from_norms,
)
from crossdiff.crosscoder.evaluate import evaluate
from crossdiff.crosscoder.groundtruth import score_classes
from crossdiff.crosscoder.stage import CrosscoderStageConfig, choose_multi_sites
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures, subset_class
from crossdiff.crosscoder.train import train
from crossdiff.errors import ConfigError
from tests.crosscoder.conftest import planted, small_crosscoder

CFG = TrainConfig(steps=20, lr=3e-2, warmup_steps=2, dead_tokens=128, aux_k=6, checkpoint_every=5)


def data(n: int = 20) -> list[dict[str, torch.Tensor]]:
    return list(planted(noise=0.05).batches(64, n, seed=1))


def dedicated(**overrides: object) -> Crosscoder:
    cfg = {"n_dedicated": (8, 5), "dedicated_encoder_own": True, "sparsity_coeff": 0.5}
    return small_crosscoder(**(cfg | overrides))


def assert_partition_zero(model: Crosscoder) -> None:
    """Dedicated latents decode into, and (masked) read from, their own model only."""
    W_dec_LC = model.decoder_weights().detach()
    W_enc_CL = model.W_enc_CL.detach()
    (a0, a1), (b0, b1) = model.cfg.dedicated_ranges
    assert (a0, a1, b0, b1) == (6, 14, 14, 19)
    assert torch.count_nonzero(W_dec_LC[a0:a1, 12:]) == 0  # A-only: nothing into B
    assert torch.count_nonzero(W_dec_LC[b0:b1, :12]) == 0  # B-only: nothing into A
    assert torch.count_nonzero(W_enc_CL[12:, a0:a1]) == 0  # A-only reads A alone
    assert torch.count_nonzero(W_enc_CL[:12, b0:b1]) == 0
    assert torch.count_nonzero(W_dec_LC[a0:a1, :12]) > 0  # and the own blocks did learn
    assert torch.count_nonzero(W_enc_CL[:12, a0:a1]) > 0


def test_dedicated_zero_blocks_stay_exactly_zero_through_training_and_resume(
    tmp_path: Path,
) -> None:
    straight = dedicated()
    names = set(dict(straight.named_parameters()))
    # the zero decoder blocks are no parameters at all: only each model's own block is
    assert {"W_dec_dedicated.0", "W_dec_dedicated.1"} <= names
    assert straight.W_dec_dedicated[0].shape == (8, 12)
    initial = straight.W_enc_CL.detach().clone()
    full = train(straight, data(), CFG, tmp_path / "straight")
    assert not torch.equal(initial, straight.W_enc_CL)
    assert any(s.aux > 0 for s in full.history)  # aux-k and the sparsity term both ran
    assert_partition_zero(straight)

    def interrupted() -> Iterator[dict[str, torch.Tensor]]:
        for i, batch in enumerate(data()):
            if i == 12:
                raise KeyboardInterrupt
            yield batch

    resumed = dedicated()
    with pytest.raises(KeyboardInterrupt):
        train(resumed, interrupted(), CFG, tmp_path / "resumed")
    fresh = dedicated()
    train(fresh, data(), CFG, tmp_path / "resumed")
    assert_partition_zero(fresh)
    for (name, a), b in zip(
        straight.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    reloaded = Crosscoder.from_pretrained(tmp_path / "resumed" / "checkpoint" / "model")
    assert_partition_zero(reloaded)
    # Adam's moments at the masked encoder entries are exactly zero too
    from crossdiff.crosscoder.train import make_optimizer

    optimizer = make_optimizer(reloaded, CFG)
    from crossdiff.crosscoder.train import load_checkpoint

    load_checkpoint(tmp_path / "resumed", reloaded, optimizer)
    state = optimizer.state[reloaded.W_enc_CL]
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(state[moment][12:, 6:14]) == 0


def test_dedicated_latents_are_classed_by_construction() -> None:
    model = dedicated(dedicated_encoder_own=False)
    origins = latent_origins(model)
    assert origins[:6] == ["designated"] * 6 and origins[6:19] == ["dedicated"] * 13
    assert origins[19:] == ["free"] * 29
    classes = latent_classes(model)
    assert classes[6:14] == ["A_only"] * 8 and classes[14:19] == ["B_only"] * 5
    table = class_table(model)
    assert table["by construction"] == {"shared": 6, "A_only": 8, "B_only": 5}
    assert sum(table["emergent"].values()) == 29


def test_single_site_default_layout_is_unchanged() -> None:
    """No new parameters or buffers for a crosscoder without the new options."""
    model = small_crosscoder()
    assert set(model.state_dict()) == {
        "W_dec_shared_SD", "W_dec_excl_XC", "W_enc_CL", "b_enc_L", "b_dec_C",
        "input_scale_M", "threshold",
    }  # fmt: skip
    assert model.cfg.input_keys == ("A", "B")


def reference_fve(model: Crosscoder, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """FVE per model × site, recomputed in float64 from the weights alone."""
    W_enc = model.W_enc_CL.detach().double()
    W_dec = model.decoder_weights().detach().double()
    b_enc, b_dec = model.b_enc_L.detach().double(), model.b_dec_C.detach().double()
    rho = model.decoder_norms().detach().double().sum(1)
    keys = model.cfg.input_keys
    scales = [float(s) for s in model.input_scale_M]
    x_BC = torch.cat([batch[k].double() * s for k, s in zip(keys, scales, strict=True)], 1)
    pre = x_BC @ W_enc + b_enc
    f = pre.clamp_min(0) * ((pre.clamp_min(0) * rho) > float(model.threshold))
    recon_BC = f @ W_dec + b_dec
    out, start = {}, 0
    for key, s in zip(keys, scales, strict=True):
        x = batch[key].double()
        r = recon_BC[:, start : start + x.shape[1]] / s
        start += x.shape[1]
        out[key] = float(1 - (x - r).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return out


def test_multi_site_fve_per_model_and_site_equals_a_float64_recomputation() -> None:
    sites = ("0.mlp_out", "1.mlp_out", "2.mlp_out")
    cfg = CrosscoderConfig(
        models=("A", "B"), d_models=(6, 6), dict_size=64, k=6, n_shared=4, sites=sites
    )
    model = Crosscoder(cfg)
    assert cfg.d_total == 36 and model.W_dec_shared_SD.shape == (4, 18)
    gen = torch.Generator().manual_seed(0)
    # sites of different scales, correlated through a common source
    source = [torch.randn(256, 6, generator=gen) for _ in range(40)]

    def noise() -> torch.Tensor:
        return 0.1 * torch.randn(256, 6, generator=gen)

    batches = [
        {f"{m}/{s}": (j + 1) * 3.0**i * src.roll(i + j, 1) + noise()
         for j, m in enumerate(cfg.models) for i, s in enumerate(sites)}
        for src in source
    ]  # fmt: skip
    train(model, batches[:30], TrainConfig(steps=30, lr=1e-2, warmup_steps=2))
    held = {k: torch.cat([b[k] for b in batches[30:]]) for k in batches[0]}
    result = evaluate(model, [held])
    expected = reference_fve(model, held)
    assert set(result.fve) == set(expected) and len(expected) == 6
    for key, value in expected.items():
        assert result.fve[key] == pytest.approx(value, abs=1e-9), key
    assert all(v > 0.2 for v in expected.values())  # a real reconstruction, not a constant
    # per-site decoder norms add up to each model's norm; per-site classes exist per layer
    by_input = model.decoder_norms_by_input().detach()
    per_model = model.decoder_norms().detach()
    assert torch.allclose(by_input[:, :3].pow(2).sum(1).sqrt(), per_model[:, 0], atol=1e-5)
    assert set(site_classes(model)) == set(sites)
    assert site_classes(model)["0.mlp_out"][:4] == ["shared"] * 4  # the tied block


def test_multi_site_export_is_one_input_block() -> None:
    from crossdiff.crosscoder.export import to_sae_lens

    cfg = CrosscoderConfig(models=("A", "B"), d_models=(4, 4), dict_size=16, k=2, sites=("x", "y"))
    model = Crosscoder(cfg)
    model.input_scale_M.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    sae = to_sae_lens(model, "B/x")
    assert sae.W_dec.shape == (16, 4)
    assert torch.allclose(sae.W_dec, model.decoder_weights()[:, 8:12] / 3.0)
    with pytest.raises(ConfigError, match="'B/z'"):
        to_sae_lens(model, "B/z")


def test_three_models_recover_planted_features_with_their_model_subset() -> None:
    planted_cfg = PlantedConfig(
        models=("A", "B", "C"),
        d_models=(24, 24, 24),
        n_shared=6,
        n_exclusive=(5, 5, 5),
        subsets=((("A", "B"), 5), (("B", "C"), 5)),
        density_range=(0.04, 0.1),
        seed=0,
    )
    features = PlantedFeatures(planted_cfg)
    assert sorted(set(features.classes)) == ["A+B", "A_only", "B+C", "B_only", "C_only", "shared"]
    model = Crosscoder(
        CrosscoderConfig(
            models=("A", "B", "C"), d_models=(24, 24, 24), dict_size=96,
            k=float(features.densities.sum()),
        )
    )  # fmt: skip
    tcfg = TrainConfig(steps=800, lr=3e-3, warmup_steps=50, dead_tokens=20_000, aux_k=12)
    train(model, features.batches(256, 800, seed=1), tcfg)
    scores = score_classes(model, features)
    assert scores.recovered_with_class >= 0.9, scores
    assert min(scores.recall.values()) >= 0.8, scores
    subsets = latent_subsets(model)
    assert {"A+B", "B+C"} <= set(subsets)


def test_subset_classes_reduce_to_the_relative_norm_convention_for_two_models() -> None:
    norms = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.12], [0.5, 0.5], [0.1, 1.0], [0, 0]])
    assert subsets_from_norms(norms.double(), ("A", "B")) == [
        "A_only", "A_only", "shared", "shared", "B_only", "dead"
    ]  # fmt: skip
    three = torch.tensor([[1.0, 0.5, 0.01], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]]).double()
    assert subsets_from_norms(three, ("A", "B", "C")) == ["A+B", "shared", "C_only"]


# ---------------------------------------------------------------- bad input


def test_a_partition_larger_than_the_dictionary_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"partition .*= 52 latents.*dict_size 48"):
        small_crosscoder(n_dedicated=(20, 26))
    with pytest.raises(ConfigError, match=r"n_dedicated has 1 entries for 2 models"):
        small_crosscoder(n_dedicated=(4,))
    stage = CrosscoderStageConfig(n_shared=100, n_dedicated=500)
    with pytest.raises(ConfigError, match=r"n_dedicated 500 = 1100 latents.*dictionary size 1024"):
        stage.check_partition(1024, 2)


class FakeStore:
    def __init__(self) -> None:
        self.sites = {"dense": ["0.mlp_out", "1.mlp_out"], "moe": ["0.mlp_out"]}
        self.dims = {"dense": {"0.mlp_out": 8, "1.mlp_out": 8}, "moe": {"0.mlp_out": 8}}


def test_a_site_missing_for_one_model_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"site '1.mlp_out' is missing for model 'moe'"):
        choose_multi_sites(FakeStore(), None, ("0.mlp_out", "1.mlp_out"))
    model = Crosscoder(
        CrosscoderConfig(models=("A", "B"), d_models=(4, 4), dict_size=8, k=2, sites=("x", "y"))
    )
    batch = {k: torch.zeros(3, 4) for k in ("A/x", "A/y", "B/x")}
    with pytest.raises(ConfigError, match=r"model/site input\(s\) \['B/y'\]"):
        model.encode(batch)


def test_a_model_subset_naming_an_unknown_model_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'D'"):
        PlantedConfig(
            models=("A", "B", "C"), d_models=(4, 4, 4), n_exclusive=(1, 1, 1),
            subsets=((("A", "D"), 2),),
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown model 'X'"):
        subset_class(["X"], ("A", "B"))


def test_multi_site_crosscoder_through_the_analyses_recovers_planted_classes() -> None:
    """Two sites, each with its own planted features: the feature_classes analysis counts every
    exclusive feature of either site as one latent of its class, and reports classes by site."""
    from crossdiff.latents import scan_batches
    from crossdiff_analyses.feature_classes import classify, latent_scaling

    per_site = {
        site: PlantedFeatures(
            PlantedConfig(
                d_models=(16, 16),
                n_shared=5,
                n_exclusive=(4, 3),
                density_range=(0.04, 0.1),
                seed=seed,
            )
        )
        for seed, site in enumerate(("x", "y"))
    }
    k = float(sum(p.densities.sum() for p in per_site.values()))

    def batches(n: int, size: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            batch = {}
            for site, planted_site in per_site.items():
                acts, _ = planted_site.sample(size, gen)
                batch |= {f"{m}/{site}": a for m, a in acts.items()}
            yield batch

    model = Crosscoder(
        CrosscoderConfig(
            models=("A", "B"), d_models=(16, 16), dict_size=64, k=k, n_shared=4, sites=("x", "y")
        )
    )
    tcfg = TrainConfig(steps=700, lr=3e-3, warmup_steps=50, dead_tokens=20_000, aux_k=8)
    train(model, batches(700, 256, 1), tcfg)
    held = [(b, {"domains": torch.zeros(2000, dtype=torch.uint8)}) for b in batches(4, 2000, 9)]
    scan = scan_batches(model, held, ["all"], top_n=1)
    summary = classify(model, scan.fires_L)
    assert summary["counts"]["A_only"] == 8, summary  # 4 per site
    assert summary["counts"]["B_only"] == 6, summary
    assert set(summary["subsets_by_site"]) == {"x", "y"}
    origin = summary["subsets_by_origin"]
    # the tied block stays unused (no planted direction is the same in both models): only
    # live latents are counted, by construction or emergent
    assert origin["by construction"].get("shared", 0) == int((scan.fires_L[:4] > 0).sum())
    assert sum(origin["emergent"].values()) == int((scan.fires_L[4:] > 0).sum())
    beta_LM = latent_scaling(model, held)
    assert beta_LM.shape == (64, 2) and bool(torch.isfinite(beta_LM).all())
