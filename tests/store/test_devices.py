"""Harvest through the real TransformerLens adapter with the models on every device present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossdiff.adapters import adapt
from crossdiff.plugins import create_plugin_manager
from crossdiff.store import StoreConfig, harvest, load_shard
from tests.devices import DEVICES
from tests.store.store_helpers import make_sequences, tiny_transformer


def harvest_on(device: str, out: Path):
    manager = create_plugin_manager()
    adapters = {
        "dense": adapt(tiny_transformer(32, seed=1).to(device), manager),
        "moe": adapt(tiny_transformer(48, moe=True, seed=2).to(device), manager),
    }
    config = StoreConfig(batch_sequences=4, shard_sequences=8)
    return harvest(adapters, ["0.mlp_out"], make_sequences(n=16), out, config)


@pytest.mark.parametrize("device", DEVICES)
def test_harvest_on_device_equals_the_cpu_harvest(device: str, tmp_path: Path) -> None:
    expected = harvest_on("cpu", tmp_path / "cpu")
    got = harvest_on(device, tmp_path / device)
    assert got.tokens == expected.tokens == 16 * 15
    for a, b in zip(got.shard_paths(), expected.shard_paths(), strict=True):
        shard_a, shard_b = load_shard(a), load_shard(b)
        assert shard_a.keys() == shard_b.keys()
        for key, value in shard_b.items():
            assert shard_a[key].device.type == "cpu"
            tolerance = 0 if device == "cpu" else 1e-3
            assert torch.allclose(shard_a[key].double(), value.double(), atol=tolerance), key
