"""``routing_similarity`` on constructed routers with known answers, and through every adapter."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch

from crossdiff.adapters import adapt
from crossdiff.errors import ConfigError
from crossdiff.plugins import create_plugin_manager
from crossdiff_analyses._moe import check_layers, model_batches
from crossdiff_analyses.routing_similarity import (
    SimilaritySettings,
    binned_curve,
    collapse,
    cross_model,
    greedy_continuation,
    intersection,
    logistic_fit,
    mean_direction_share,
    model_similarity,
    models_cross,
    spearman_test,
    token_level,
    usage,
)
from tests.adapters.conftest import MOE_CASES, get_case
from tests.adapters.tiny_models import VOCAB, hf_model, tl_model

SMALL = SimilaritySettings(pairs=400, bins=8, prompts=2, prompt_tokens=6, new_tokens=4)


def _route(router_ED: torch.Tensor, x_TD: torch.Tensor, k: int) -> torch.Tensor:
    """``[T, K]`` the k largest router logits of each row (a linear top-k router)."""
    return (x_TD @ router_ED.T).topk(k, dim=-1).indices


def test_orthogonal_router_gives_the_overlap_curve_by_hand() -> None:
    # E = 4 orthonormal router rows in D = 6; token inputs e_i + e_j choose exactly {i, j}, so
    # cos(x_a, x_b) = |S_a ∩ S_b| / 2 = overlap for every pair: the curve is the diagonal
    router = torch.eye(6)[:4]
    sets = list(itertools.combinations(range(4), 2))
    x = torch.stack([router[i] + router[j] for i, j in sets] * 20)  # [120, 6]
    topk = _route(router, x, 2)
    assert [set(row) for row in topk.tolist()[:6]] == [set(s) for s in sets]
    labels = np.repeat(["a", "b", "c"], 40)
    stats = token_level(x, topk, labels, 3000, 5, np.random.default_rng(0))
    for kind in ("within", "across"):
        raw = stats[kind]
        # 5 bins of width 0.4 (edges ±0.2, ±0.6): cos 0, 0.5, 1 fall in the last three
        assert raw["curve"]["mean_overlap"][:2] == [None, None]
        assert raw["curve"]["mean_overlap"][2:] == [0.0, pytest.approx(0.5), pytest.approx(1.0)]
        assert raw["spearman"] == pytest.approx(1.0)
        assert raw["linear"]["slope"] == pytest.approx(1.0)
        assert raw["linear"]["intercept"] == pytest.approx(0.0, abs=1e-12)
        assert raw["mean_cosine"] == pytest.approx(raw["mean_overlap"])
        # the mean direction is (1,1,1,1,0,0)/2: removing it leaves cos = 2·overlap − 1
        centred = stats[f"{kind}_mean_removed"]
        assert centred["linear"]["slope"] == pytest.approx(0.5)
        assert centred["linear"]["intercept"] == pytest.approx(0.5)
        want = [pytest.approx(0.0), None, pytest.approx(0.5), None, pytest.approx(1.0)]
        assert centred["curve"]["mean_overlap"] == want  # cos −1, 0, 1
    # every pair was drawn inside (within) or across domains as asked
    assert stats["within"]["pairs"] == stats["across"]["pairs"] == 3000


def test_curve_bins_and_logistic_fit_recover_known_values() -> None:
    curve = binned_curve(np.array([-1.0, -0.2, 0.1, 0.1, 1.0]), np.array([0, 1, 0, 1, 1.0]), 2)
    assert curve["count"] == [2, 3] and curve["mean_overlap"] == [0.5, pytest.approx(2 / 3)]
    x = np.linspace(-1, 1, 201)
    fit = logistic_fit(x, 1 / (1 + np.exp(-(-1.0 + 3.0 * x))))
    assert fit["intercept"] == pytest.approx(-1.0, abs=1e-6)
    assert fit["slope"] == pytest.approx(3.0, abs=1e-6)


def test_a_dominant_shared_direction_collapses_routing() -> None:
    generator = torch.Generator().manual_seed(0)
    router = torch.randn(8, 16, generator=generator)
    u = torch.randn(16, generator=generator)
    labels = np.repeat(["code", "stories"], 300)
    noise = torch.randn(600, 16, generator=generator)
    shared = 100 * u + noise  # every token along u: the same top-2 for unrelated inputs
    rng = np.random.default_rng(0)
    collapsed = collapse(shared, _route(router, shared, 2), labels, 8, 2000, rng)
    assert collapsed["cross_domain_overlap"] == pytest.approx(1.0)
    assert collapsed["shuffled_baseline"] == pytest.approx(2 / 8, abs=0.03)
    assert collapsed["ratio"] > 3.5
    assert collapsed["mean_direction_share"] > 0.99
    assert collapsed["entropy"] == pytest.approx(0.5 * np.log(2) / np.log(8) * 2)  # 2 of 8 used
    diverse = collapse(noise, _route(router, noise, 2), labels, 8, 2000, rng)
    assert diverse["cross_domain_overlap"] < 0.5 and diverse["ratio"] < 2
    assert diverse["mean_direction_share"] < 0.1
    assert mean_direction_share(torch.ones(5, 3)) == pytest.approx(1.0)


def test_hungarian_matching_recovers_a_permutation_of_experts() -> None:
    rng = np.random.default_rng(1)
    a = torch.as_tensor(np.stack([rng.choice(6, 2, replace=False) for _ in range(600)]))
    perm = torch.as_tensor(rng.permutation(6))
    b = perm[a]  # model B routes every token to the renamed experts
    result = cross_model(a, b, 6, 6)
    assert result["matching"] == perm.tolist()
    assert result["matched_overlap"] == 1.0
    assert result["unmatched_overlap"] < 0.8
    assert result["chance"] == pytest.approx(2 / 6)
    assert result["fit_tokens"] == 300 and result["scored_tokens"] == 300


def test_spearman_test_is_calibrated_under_the_null_and_detects_a_dependence() -> None:
    # 40 sequences of 10 units; pairs of random members; y independent of x: the one-sided p
    # falls below 0.05 in about 5% of draws, and ρ's CI covers 0 as often
    rejections = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        unit_a, unit_b = rng.integers(0, 40, 600), rng.integers(0, 40, 600)
        x, y = rng.normal(size=600), rng.normal(size=600)
        test = spearman_test(x, y, unit_a, unit_b, rng)
        assert test["units"] == 40
        rejections += test["spearman_p"] < 0.05
    assert rejections <= 5
    rng = np.random.default_rng(0)
    x = rng.normal(size=600)
    test = spearman_test(x, x + rng.normal(size=600), unit_a, unit_b, rng)
    assert test["spearman_p"] < 1e-6 and 0 < test["spearman_ci"][0] < test["spearman_ci"][1] < 1
    # undefined: a constant side, or fewer than 3 units
    assert spearman_test(x, np.ones(600), unit_a, unit_b, rng)["spearman_p"] is None
    assert spearman_test(x, x, np.zeros(600, int), np.ones(600, int), rng)["spearman_p"] is None


def test_cross_model_split_is_random_over_sequences() -> None:
    # 40 sequences of 10 tokens; the fit half is a random half of the sequences, not the first
    rng = np.random.default_rng(2)
    a = torch.as_tensor(np.stack([rng.choice(6, 2, replace=False) for _ in range(400)]))
    groups = np.arange(400) // 10
    result = cross_model(a, a, 6, 6, groups, np.random.default_rng(0))
    assert result["fit_tokens"] == result["scored_tokens"] == 200 and result["sequences"] == 20
    assert result["matched_overlap"] == 1.0
    assert abs(result["different_input_overlap"] - 2 / 6) < 0.1
    assert result["same_vs_different_p"] < 1e-6
    other = cross_model(a, a, 6, 6, groups, np.random.default_rng(1))
    assert other["different_input_overlap"] != result["different_input_overlap"]


def test_usage_and_intersection_by_hand() -> None:
    chosen = torch.tensor([[0, 1], [0, 1], [1, 2], [1, 2]])
    u = usage(chosen, np.array([0, 0, 1, 1]), 3)
    np.testing.assert_allclose(u, [[0.5, 0.5, 0], [0, 0.5, 0.5]])
    np.testing.assert_allclose(intersection(u, u), [[1.0, 0.5], [0.5, 1.0]])


def _batches(seed: int = 3) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {d: [torch.randint(3, VOCAB, (3, 10), generator=generator)] for d in ("a", "b")}


@pytest.mark.parametrize("name", MOE_CASES)
def test_runs_through_the_adapter_of_every_moe_family(name: str) -> None:
    case = get_case(name)
    batches = _batches()
    summary, routed = model_similarity(name, case.adapter, batches, SMALL)
    json.dumps(summary)  # JSON-serialisable as it is
    assert (
        summary["tokens"] == 60 and sorted(map(int, summary["layers"])) == case.adapter.moe_layers()
    )
    for layer, stats in summary["layers"].items():
        k, e = case.adapter.top_k(int(layer)), case.adapter.n_experts(int(layer))
        # the router inputs are the block inputs the routing was computed from
        routing = case.adapter.routing(batches["a"][0], [int(layer)])[int(layer)]
        torch.testing.assert_close(routed.x[int(layer)][:30], routing.router_input.float())
        token = stats["token"]["within"]
        assert token["pairs"] == 400 and 0 <= token["mean_overlap"] <= 1
        assert -1 <= token["mean_cosine"] <= 1
        assert sum(token["curve"]["count"]) == 400
        seq = stats["sequence"]
        assert seq["sequences"] == 6 and seq["all"]["pairs"] == 15
        assert seq["within"]["pairs"] + seq["across"]["pairs"] == 15
        assert stats["collapse"]["uniform_baseline"] == k / e
        assert abs(stats["collapse"]["shuffled_baseline"] - k / e) < 0.12
        prompt = summary["prompt_continuation"]["layers"][layer]
        assert 0 <= prompt["own_continuation"] <= 1


def test_runs_on_the_in_repo_moe() -> None:
    from crossdiff.models.build import build_model
    from crossdiff.models.config import ModelConfig

    config = ModelConfig(arch="moe", n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=96,
                         n_ctx=16)  # fmt: skip
    adapter = adapt(build_model(config).eval(), create_plugin_manager())
    summary, _ = model_similarity("moe", adapter, _batches(), SMALL)
    assert set(summary["layers"]) == {"0", "1"}
    assert set(summary["prompt_continuation"]["layers"]) == {"0", "1"}


def test_cross_model_recovers_permuted_experts_through_the_adapter() -> None:
    model = tl_model(moe=True)
    permuted = copy.deepcopy(model)
    perm = [2, 0, 3, 1]  # expert e of the copy is expert perm[e] of the original
    with torch.no_grad():
        for block in permuted.blocks:
            originals = [copy.deepcopy(block.mlp.experts[p]) for p in perm]
            for e, expert in enumerate(originals):
                block.mlp.experts[e] = expert
            block.mlp.W_gate.weight.copy_(block.mlp.W_gate.weight[perm])
    manager = create_plugin_manager()
    adapters = {"a": adapt(model, manager), "b": adapt(permuted, manager)}
    settings = SimilaritySettings(pairs=50, prompts=0)
    routed = {n: model_similarity(n, a, _batches(), settings)[1] for n, a in adapters.items()}
    cross = models_cross(routed, adapters)["a|b"]
    inverse = np.argsort(perm).tolist()  # original expert o is expert inverse[o] of the copy
    for layer in ("0", "1"):
        assert cross[f"{layer}|{layer}"]["matching"] == inverse
        assert cross[f"{layer}|{layer}"]["matched_overlap"] == 1.0


def test_greedy_continuation_is_the_models_own_greedy_generate() -> None:
    model = hf_model("mixtral")
    adapter = adapt(model, create_plugin_manager())
    prompts = _batches()["a"][0][:, :5]
    ours = greedy_continuation(adapter, prompts, 6)
    model.generation_config.eos_token_id = None  # no early stop: always 6 new tokens
    with torch.no_grad():
        mask = torch.ones_like(prompts)
        theirs = model.generate(
            prompts, max_new_tokens=6, do_sample=False, attention_mask=mask, pad_token_id=0
        )
    assert torch.equal(ours, theirs)


def test_bad_settings_and_layers_are_named() -> None:
    with pytest.raises(ConfigError, match="pairs must be a positive integer, got 0"):
        SimilaritySettings(pairs=0)
    with pytest.raises(ConfigError, match="new_tokens must be a positive integer or None, got 0"):
        SimilaritySettings(new_tokens=0)
    assert SimilaritySettings().prompt_lengths(32) == (16, 16)
    with pytest.raises(ConfigError, match="prompt_tokens=40 is longer than the sequences"):
        model_similarity("m", get_case("mixtral").adapter, _batches(),
                         SimilaritySettings(pairs=10, prompt_tokens=40))  # fmt: skip
    with pytest.raises(ConfigError, match="an empty layer list was given for model 'm'"):
        check_layers("m", get_case("mixtral").adapter, ())


def test_alignment_maps_corpus_ids_to_the_models_ids() -> None:
    batches = _batches()
    table = np.roll(np.arange(VOCAB), 7)
    mapped = model_batches(batches, table)
    assert torch.equal(mapped["a"][0], torch.as_tensor(table)[batches["a"][0]])
    assert model_batches(batches, None) is batches


def test_the_load_balancing_example_config_trains_the_three_variants() -> None:
    from pathlib import Path

    from crossdiff.models.config import PRESETS
    from crossdiff.pipeline import load_run_config

    root = Path(__file__).resolve().parents[2]
    config = load_run_config(root / "examples" / "load_balancing.toml")
    assert "routing_similarity" in config.analyses
    models = config.models
    assert {m.arch for m in models.values()} == {"moe"}
    assert "load_balance_coef" not in models["lb_preset"].train
    assert PRESETS["tiny"]["train"]["load_balance_coef"] > 0
    assert models["lb_zero"].train["load_balance_coef"] == 0.0
    assert models["small_batch"].train["batch_size"] < PRESETS["tiny"]["train"]["batch_size"]
