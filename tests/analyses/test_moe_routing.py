"""``routing`` statistics by hand, and through the adapter of every MoE family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossdiff.errors import ConfigError
from crossdiff_analyses.routing import (
    coactivation,
    expert_shares,
    experts_for_coverage,
    layer_statistics,
    membership,
    model_routing,
    normalised_entropy,
)
from tests.adapters.conftest import MOE_CASES, get_case
from tests.adapters.tiny_models import VOCAB
from tests.analyses.moe_reference import direct_layer


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def test_statistics_by_hand() -> None:
    # 4 tokens, K = 2 of E = 4: expert 0 in every top-k, 1 in three, 2 in one, 3 never
    chosen = torch.tensor([[0, 1], [1, 0], [0, 2], [1, 0]])
    shares = expert_shares(chosen, 4)
    np.testing.assert_allclose(shares, [1.0, 0.75, 0.25, 0.0])
    assert shares.sum() == 2.0
    # decisions 4, 3, 1, 0 of 8: expert 0 alone holds 50%
    assert experts_for_coverage(shares) == 1
    assert experts_for_coverage(np.array([0.5, 0.5, 0.5, 0.5])) == 2
    assert experts_for_coverage(np.array([0.3, 0.3, 0.3, 0.3, 0.8])) == 2
    p = np.array([4, 3, 1]) / 8
    assert normalised_entropy(shares) == pytest.approx(-(p * np.log(p)).sum() / math.log(4))
    assert normalised_entropy(np.full(6, 1 / 3)) == pytest.approx(1.0)
    conditional, lift = coactivation(chosen, 4)
    assert conditional[1, 0] == 1.0  # every token with 1 also has 0
    assert conditional[0, 1] == 0.75 and conditional[0, 2] == 0.25
    assert lift[1, 2] == 0.0 and lift[0, 1] == pytest.approx(0.75 / (1.0 * 0.75))
    assert np.isnan(conditional[3]).all()  # expert 3 was never chosen


def test_share_elsewhere_by_hand() -> None:
    # E = 4, K = 1; domain a: experts 0, 0, 0, 1; domain b: 0, 2, 3, 3
    chosen = torch.tensor([[0], [0], [0], [1], [0], [2], [3], [3]])
    labels = np.array(["a"] * 4 + ["b"] * 4)
    stats = layer_statistics(chosen, 4, labels)
    a, b = stats["domains"]["a"], stats["domains"]["b"]
    assert (a["top_expert"], a["top_share"], a["top_share_elsewhere"]) == (0, 0.75, 0.25)
    assert (b["top_expert"], b["top_share"], b["top_share_elsewhere"]) == (3, 0.5, 0.0)
    assert a["tokens"] == b["tokens"] == 4 and stats["domains"]["all"]["tokens"] == 8
    assert "top_share_elsewhere" not in stats["domains"]["all"]
    assert stats["uniform_experts_for_half"] == 2  # ⌈E/2⌉
    one = layer_statistics(chosen[:4], 4, labels[:4])
    assert one["domains"]["a"]["top_share_elsewhere"] is None


@pytest.mark.parametrize("name", MOE_CASES)
def test_shares_through_the_adapter_sum_to_k_and_match_the_weights(name: str) -> None:
    case = get_case(name)
    batches = {"a": [_tokens(5)], "b": [_tokens(6), _tokens(7)]}
    summary = model_routing(name, case.adapter, batches)
    assert summary["tokens"] == {"a": 24, "b": 48}
    for layer in case.adapter.moe_layers():
        stats = summary["layers"][str(layer)]
        k, e = case.adapter.top_k(layer), case.adapter.n_experts(layer)
        assert (stats["top_k"], stats["n_experts"], stats["uniform_share"]) == (k, e, k / e)
        for domain, tokens in (("a", batches["a"]), ("b", batches["b"])):
            chosen = torch.cat([direct_layer(case, layer, t)["indices"] for t in tokens])
            # every token chose K distinct experts
            torch.testing.assert_close(membership(chosen, e).sum(1), torch.full((len(chosen),), k,
                                       dtype=torch.float64))  # fmt: skip
            want = np.bincount(chosen.flatten().numpy(), minlength=e) / len(chosen)
            np.testing.assert_allclose(stats["domains"][domain]["share"], want, atol=1e-12)
            assert stats["domains"][domain]["share_sum"] == pytest.approx(k, abs=1e-12)
        assert stats["domains"]["all"]["share_sum"] == pytest.approx(k, abs=1e-12)


def test_bad_input_is_named() -> None:
    batches = {"a": [_tokens(5)]}
    with pytest.raises(ConfigError, match=r"model 'dense' is dense \(no MoE layers\)"):
        model_routing("dense", get_case("tl_dense").adapter, batches)
    deepseek = get_case("deepseek_v3").adapter
    with pytest.raises(ConfigError, match=r"layer 0 of model 'ds' is not an MoE layer.*\[1, 2\]"):
        model_routing("ds", deepseek, batches, [0])
    with pytest.raises(ConfigError, match=r"layer -1 is out of range: model 'ds' has 3 layers"):
        model_routing("ds", deepseek, batches, [-1])
