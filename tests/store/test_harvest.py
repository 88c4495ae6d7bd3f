"""Harvest: what a store holds, and that it holds exactly the models' activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossdiff.errors import ConfigError, StageError
from crossdiff.store import StoreConfig, StoreInfo, harvest, load_shard, sequence_order
from tests.store.conftest import CONFIG, SITES, store_files
from tests.store.store_helpers import DOMAINS, make_sequences, pair


def test_manifest_records_models_sites_dims_tokens_dtype(reference_store: StoreInfo) -> None:
    manifest = reference_store.manifest
    assert manifest["complete"] is True
    assert manifest["format_version"] == 1
    assert reference_store.dims == {
        "dense": {"0.mlp_out": 32, "1.resid_post": 32},
        "moe": {"0.mlp_out": 48, "1.resid_post": 48},
    }
    assert reference_store.tokens == 48 * 15  # 48 sequences, first position dropped
    assert reference_store.dtype == "fp32"
    assert manifest["n_shards"] == 6
    assert set(reference_store.norm_factors) == {"dense", "moe"}


def test_shards_hold_the_tokens_and_every_model_saw_the_same_batches() -> None:
    sequences = make_sequences(n=12)
    models = pair()
    config = StoreConfig(batch_sequences=4, shard_sequences=8)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        info = harvest(models, SITES, sequences, tmp, config)
        shards = [load_shard(p) for p in info.shard_paths()]
    assert len(shards) == 2 and len(shards[1]["tokens"]) == 4 * 15  # last shard is partial
    order = sequence_order(12, config)
    seq = torch.cat([s["sequences"] for s in shards]).numpy()
    pos = torch.cat([s["positions"] for s in shards]).numpy()
    tok = torch.cat([s["tokens"] for s in shards]).numpy()
    dom = torch.cat([s["domains"] for s in shards]).numpy()
    assert np.array_equal(np.unique(seq, return_index=True)[0], np.sort(order))
    assert np.array_equal(tok, sequences.input_ids[seq, pos])
    assert pos.min() == 1 and pos.max() == 15
    assert [info.domains[d] for d in dom[:30:15]] == [
        str(sequences.domains[s]) for s in seq[:30:15]
    ]
    assert sorted(info.domains) == sorted(DOMAINS)
    dense, moe = models["dense"].seen, models["moe"].seen
    assert len(dense) == len(moe) == 3
    assert all(torch.equal(a, b) for a, b in zip(dense, moe, strict=True))


def test_activations_equal_a_direct_capture(reference_store: StoreInfo) -> None:
    shard = load_shard(reference_store.shard_paths()[2])
    models = pair()
    first = shard["sequences"][0].item()
    ids = torch.from_numpy(make_sequences().input_ids[[first]]).long()
    for name, adapter in models.items():
        direct = adapter.capture(ids, ["1.resid_post"])["1.resid_post"][0, 1:]  # [15, D]
        stored = shard[f"act/{name}/1.resid_post"][:15]
        torch.testing.assert_close(stored, direct, rtol=1e-5, atol=1e-5)


def test_norm_factors_make_the_mean_norm_sqrt_d(reference_store: StoreInfo) -> None:
    shards = [load_shard(p) for p in reference_store.shard_paths()]
    for model, sites in reference_store.dims.items():
        for site, dim in sites.items():
            acts = torch.cat([s[f"act/{model}/{site}"] for s in shards]).double()
            factor = reference_store.norm_factors[model][site]
            mean_norm = (acts * factor).norm(dim=-1).mean().item()
            assert mean_norm == pytest.approx(math.sqrt(dim), rel=1e-9)


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_dtype_and_first_position_settings(tmp_path, dtype, torch_dtype) -> None:
    config = StoreConfig(
        dtype=dtype, batch_sequences=4, shard_sequences=8, drop_first_position=False
    )
    info = harvest(pair(), ["0.mlp_out"], make_sequences(n=8), tmp_path / "s", config)
    shard = load_shard(info.shard_paths()[0])
    assert shard["act/moe/0.mlp_out"].dtype == torch_dtype
    assert shard["act/moe/0.mlp_out"].shape == (8 * 16, 48)
    assert shard["positions"].min().item() == 0
    assert info.tokens == 8 * 16


def test_rerun_of_a_finished_store_writes_nothing(reference_store: StoreInfo) -> None:
    before = {p: p.stat().st_mtime_ns for p in reference_store.path.rglob("*")}
    again = harvest(pair(), SITES, make_sequences(), reference_store.path, CONFIG)
    assert again.manifest == reference_store.manifest
    assert {p: p.stat().st_mtime_ns for p in reference_store.path.rglob("*")} == before


def test_other_settings_on_an_existing_store_are_refused_untouched(reference_store) -> None:
    before = store_files(reference_store.path)
    other = StoreConfig(batch_sequences=4, shard_sequences=8, dtype="bf16")
    with pytest.raises(StageError, match=r"different settings.*store"):
        harvest(pair(), SITES, make_sequences(), reference_store.path, other)
    assert store_files(reference_store.path) == before


def test_unknown_site_lists_the_valid_ones(tmp_path) -> None:
    with pytest.raises(
        ConfigError, match=r"model 'dense'.*'0\.mlp_outt'.*0\.mlp_out, 0\.resid_post"
    ):
        harvest(pair(), ["0.mlp_outt"], make_sequences(), tmp_path / "s", CONFIG)
    assert not (tmp_path / "s").exists()


def test_native_site_names_resolve_to_common_ones(tmp_path) -> None:
    info = harvest(pair(), ["blocks.0.hook_mlp_out"], make_sequences(n=8), tmp_path / "s", CONFIG)
    assert info.sites == {"dense": ["0.mlp_out"], "moe": ["0.mlp_out"]}


def test_a_non_store_directory_is_not_overwritten(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StageError, match="not an activation store"):
        harvest(pair(), SITES, make_sequences(), tmp_path, CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "fp8"},
        {"batch_sequences": 3, "shard_sequences": 8},
        {"shard_sequences": 0},
        {"max_sequences": 0},
    ],
)
def test_config_is_validated(settings) -> None:
    with pytest.raises(ConfigError):
        StoreConfig(**settings)
