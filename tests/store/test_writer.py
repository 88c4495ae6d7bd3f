"""Shard files: valid safetensors for every stored dtype, and never half-written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from crossdiff.store.writer import finished_shards, read_shard_metadata, write_shard


def test_shards_load_with_safetensors_itself(tmp_path) -> None:
    tensors = {
        "act/a/0.mlp_out": torch.randn(6, 5),
        "act/b/0.mlp_out": torch.randn(6, 3).bfloat16(),
        "act/c/0.mlp_out": torch.randn(6, 3).half(),
        "tokens": torch.arange(6, dtype=torch.int32),
        "domains": torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
    }
    path = write_shard(tmp_path, 3, tensors, {"rows": 6, "norm_sums": {"x": 1.5}})
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert read_shard_metadata(path) == {"rows": 6, "norm_sums": {"x": 1.5}}
    assert finished_shards(tmp_path) == {3}


def test_a_failed_write_leaves_nothing(tmp_path) -> None:
    with pytest.raises(KeyError):
        write_shard(tmp_path, 0, {"x": torch.zeros(3, dtype=torch.float64)}, {})
    assert list((tmp_path / "shards").iterdir()) == []
