"""A model described through its adapter counts its parameters as the in-repo counter does."""

from __future__ import annotations

import pytest

from crossdiff.adapters import adapt
from crossdiff.models.build import build_model
from crossdiff.models.config import ModelConfig
from crossdiff.models.describe import describe_model, parameter_counts
from crossdiff.models.params import count_parameters
from crossdiff.plugins import create_plugin_manager


@pytest.mark.parametrize("arch", ["dense", "moe"])
def test_adapter_parameter_counts_equal_the_module_counts(arch: str) -> None:
    config = ModelConfig(
        arch=arch, n_layers=2, d_model=16, n_heads=2, d_mlp=32, vocab_size=40, n_ctx=8,
        num_experts=4, experts_per_token=2,
    )  # fmt: skip
    model = build_model(config)
    counts = parameter_counts(adapt(model, create_plugin_manager()))
    reference = count_parameters(model)
    assert counts == {"total_params": reference.total, "active_params": reference.active}
    assert (counts["active_params"] < counts["total_params"]) == (arch == "moe")


def test_describe_model_gives_loss_per_domain_and_the_arch() -> None:
    import numpy as np

    config = ModelConfig(arch="moe", n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=40,
                         n_ctx=8, num_experts=4, experts_per_token=2)  # fmt: skip
    adapter = adapt(build_model(config), create_plugin_manager())
    rows = np.random.default_rng(0).integers(0, 40, size=(3, 8))
    described = describe_model(adapter, {"a": rows, "b": rows[:1]})
    assert described["arch"] == "moe" and described["architecture"] == "HookedTransformer"
    assert described["val_tokens"] == {"a": 21, "b": 7}
    assert 2.0 < described["val_loss"]["a"] < 6.0  # near ln 40 = 3.7 for random weights
