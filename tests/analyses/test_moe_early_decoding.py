"""``early_decoding`` on tiny models of every MoE family, against float64 recomputations.

- n = 1: the contribution cosine through the adapter equals cos(w_(1)·E_(1)(x), Σ_k w_k·E_k(x))
  with experts and routing recomputed from the raw weights; the hidden-state cosine equals
  cos(resid_post − Σ_{k≥2} w_k·E_k(x), resid_post) from a plain forward with torch hooks.
- n = K reproduces the model: cosines 1, KL 0, same argmax, and the same perplexity as the
  model's own logits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossdiff.errors import ConfigError
from crossdiff_analyses.early_decoding import (
    EarlyDecodingSettings,
    layer_metrics,
    model_early_decoding,
    next_token_nll,
    no_expert_metrics,
    restricted_perplexity,
)
from tests.adapters.conftest import MOE_CASES, get_case
from tests.adapters.tiny_models import VOCAB
from tests.analyses.moe_reference import direct_layer, mean_cosine


def _tokens(seed: int, rows: int = 2, positions: int = 12) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, positions), generator=torch.Generator().manual_seed(seed))


def _plain_logits(case, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = case.model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("name", MOE_CASES)
def test_top1_cosines_equal_a_recomputation_from_the_expert_weights(name: str) -> None:
    case = get_case(name)
    tokens = _tokens(1)
    for layer in case.adapter.moe_layers():
        direct = direct_layer(case, layer, tokens)
        weighted = direct["weights"][..., None] * direct["outputs"]  # [T, K, D]
        full = weighted.sum(1)
        want_contribution = mean_cosine(weighted[:, 0], full)
        resid_post = direct["resid_post"]
        want_hidden = mean_cosine(resid_post - weighted[:, 1:].sum(1), resid_post)
        both = layer_metrics(case.adapter, [tokens], layer, [1], renormalise=(False, True))
        got, renormalised = both[False]["1"], both[True]["1"]
        assert want_contribution < 0.999  # the top-1 expert is not the whole mixture here
        assert got["contribution_cosine"] == pytest.approx(want_contribution, abs=2e-5)
        assert got["hidden_cosine"] == pytest.approx(want_hidden, abs=2e-5)
        # renormalising rescales each token's top-1 contribution: same direction, new hidden state
        assert renormalised["contribution_cosine"] == pytest.approx(want_contribution, abs=2e-5)
        scale = direct["weights"].sum(-1, keepdim=True) / direct["weights"][:, :1]  # [T, 1]
        hidden_renormalised = direct["resid_post"] - full + scale * weighted[:, 0]
        want = mean_cosine(hidden_renormalised, direct["resid_post"])
        assert renormalised["hidden_cosine"] == pytest.approx(want, abs=2e-5)


@pytest.mark.parametrize("name", MOE_CASES)
def test_the_no_routed_expert_baseline_equals_a_recomputation(name: str) -> None:
    # every routed expert removed, shared experts kept: h_0 = resid_post − Σ_k w_k·E_k(x)
    case = get_case(name)
    tokens = _tokens(1)
    for layer in case.adapter.moe_layers():
        direct = direct_layer(case, layer, tokens)
        routed = (direct["weights"][..., None] * direct["outputs"]).sum(1)  # [T, D]
        resid_post, block = direct["resid_post"], direct["block_output"]
        got = no_expert_metrics(case.adapter, [tokens], layer)
        assert got["hidden_cosine"] == pytest.approx(
            mean_cosine(resid_post - routed, resid_post), abs=2e-5
        )
        shared = block - routed  # roundoff alone in a family without shared experts
        want_block = mean_cosine(shared, block) if shared.norm() > 1e-3 * block.norm() else 0.0
        assert got["block_cosine"] == pytest.approx(want_block, abs=2e-5)
        top1 = layer_metrics(case.adapter, [tokens], layer, [1])["1"]
        assert got["hidden_cosine"] < top1["hidden_cosine"]  # the top-1 expert closes some gap
        assert got["lens_kl"] > top1["lens_kl"] > 0


@pytest.mark.parametrize("name", MOE_CASES)
def test_keeping_all_k_experts_reproduces_the_model(name: str) -> None:
    case = get_case(name)
    tokens = _tokens(2)
    for layer in case.adapter.moe_layers():
        k = case.adapter.top_k(layer)
        got = layer_metrics(case.adapter, [tokens], layer, [k], renormalise=True)[str(k)]
        for key in ("contribution_cosine", "block_cosine", "hidden_cosine"):
            assert got[key] == pytest.approx(1.0, abs=1e-6), key
        assert got["lens_top1_agreement"] == got["final_top1_agreement"] == 1.0
        assert abs(got["lens_kl"]) < 1e-9 and abs(got["final_kl"]) < 1e-9
    k = min(case.adapter.top_k(layer) for layer in case.adapter.moe_layers())
    logits = _plain_logits(case, tokens).double()
    nll = -F.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).mean()
    got = restricted_perplexity(case.adapter, [tokens], k, renormalise=False)
    assert got == pytest.approx(math.exp(float(nll)), rel=1e-6)
    assert restricted_perplexity(case.adapter, [tokens], 1, renormalise=False) != pytest.approx(
        got, rel=1e-4
    )


def test_next_token_nll_by_hand() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6 after position 0
    tokens = torch.tensor([[0, 2, 1]])
    total, count = next_token_nll(logits, tokens)
    assert count == 2
    assert total == pytest.approx(-math.log(0.5) - math.log(0.25))


def test_model_summary_has_every_layer_n_and_domain() -> None:
    case = get_case("tl_moe")
    batches = {"a": [_tokens(3)], "b": [_tokens(4)]}
    summary = model_early_decoding("moe", case.adapter, batches, EarlyDecodingSettings(layers=(1,)))
    assert summary["tokens"] == {"a": 24, "b": 24}
    assert list(summary["layers"]) == ["1"]
    stats = summary["layers"]["1"]
    assert set(stats["as_routed"]) == set(stats["renormalised"]) == {"1", "2"}
    assert (
        0 < stats["no_routed_experts"]["hidden_cosine"] < stats["as_routed"]["1"]["hidden_cosine"]
    )
    assert stats["as_routed"]["2"]["hidden_cosine"] == pytest.approx(1.0, abs=1e-6)
    for variant in ("as_routed", "renormalised"):
        assert set(summary["perplexity"][variant]) == {"a", "b"}
        assert summary["perplexity_increase"][variant]["a"]["2"] == 0.0


def test_bad_input_is_named() -> None:
    moe = get_case("tl_moe").adapter
    batches = {"a": [_tokens(3)]}
    with pytest.raises(ConfigError, match=r"model 'dense' is dense \(no MoE layers\)"):
        model_early_decoding("dense", get_case("tl_dense").adapter, batches)
    with pytest.raises(ConfigError, match=r"layer 7 is out of range: model 'moe' has 2 layers"):
        model_early_decoding("moe", moe, batches, EarlyDecodingSettings(layers=(7,)))
    with pytest.raises(ConfigError, match=r"n=3 is out of range for layer 0 .* top-k = 2"):
        model_early_decoding("moe", moe, batches, EarlyDecodingSettings(ns=(1, 3)))
    with pytest.raises(ConfigError, match=r"keep_top_n must be in 1\.\.2"):
        restricted_perplexity(moe, batches["a"], 3, renormalise=False)
