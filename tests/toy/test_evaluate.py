"""Per-model records on hand-built weights: usage shares and the gain a feature gets."""

from __future__ import annotations

import pytest
import torch

from crossdiff.toy.config import ToyConfig
from crossdiff.toy.evaluate import evaluate_batch
from crossdiff.toy.model import ToyParams
from crossdiff.toy.train import TrainedBatch


@pytest.mark.parametrize("router_weights", ["softmax", "renormalised"])
def test_switch_weights_count_a_whole_sample_in_usage_and_scale_the_feature_gain(
    router_weights: str,
) -> None:
    # two identical experts keeping features 0 and 1; a zero router gives p = (0.5, 0.5), and the
    # tie always picks expert 0: its weight is 0.5 (Switch) or 1 (renormalised)
    config = ToyConfig(
        n_features=3, d_hidden=2, n_experts=2, k=1, router_weights=router_weights,
        load_balance=0.1,
    )  # fmt: skip
    W_MEHN = torch.eye(2, 3)[None, None].repeat(1, 2, 1, 1)
    params = ToyParams(
        W_MEHN, torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.tensor([2]), torch.tensor([1]),
        torch.tensor([config.renormalised]),
    )  # fmt: skip
    (record,) = evaluate_batch(TrainedBatch([config], params, torch.zeros(1)), samples=256)
    assert record["usage"] == pytest.approx([1.0, 0.0])
    weight = 1.0 if router_weights == "renormalised" else 0.5
    assert record["feature_weight"][0] == pytest.approx([weight] * 3)
    assert record["feature_usage"][0] == pytest.approx([1.0] * 3)
    assert record["weighted_norm2"] == pytest.approx([weight, weight, 0.0])
    assert record["weighted_dimensionality"] == pytest.approx([1.0, 1.0, 0.0])
    assert record["renormalised"] is (router_weights == "renormalised")
