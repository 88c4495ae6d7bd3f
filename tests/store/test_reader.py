"""Reader and streaming source: every row once per pass, shuffled, seeded, bounded memory."""

from __future__ import annotations

import pytest
import torch

from crossdiff.errors import ConfigError
from crossdiff.store import StoreConfig, StoreInfo, StoreReader, StreamingSource, load_shard
from crossdiff.store.reader import StoreReader as ReaderClass
from tests.store.conftest import CONFIG, SITES
from tests.store.store_helpers import make_sequences, pair


def _stored(info: StoreInfo, model: str, site: str) -> torch.Tensor:
    return torch.cat([load_shard(p)[f"act/{model}/{site}"] for p in info.shard_paths()])


def _sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order, to compare multisets of rows."""
    keys = rows.double() @ torch.linspace(1, 2, rows.shape[1], dtype=torch.float64)
    return rows[keys.argsort()]


def test_one_pass_yields_every_row_once_shuffled(reference_store: StoreInfo) -> None:
    reader = StoreReader(
        reference_store,
        batch_size=50,
        sites={"dense": "1.resid_post", "moe": "0.mlp_out"},
        normalize=False,
        shards_in_buffer=2,
    )
    batches = list(reader)
    assert len(batches) == len(reader) == -(-720 // 50)
    assert all(set(b) == {"dense", "moe"} for b in batches)
    assert [b["dense"].shape for b in batches[:1]] == [(50, 32)]
    assert batches[0]["moe"].shape == (50, 48) and batches[-1]["dense"].shape == (720 % 50, 32)
    dense = torch.cat([b["dense"] for b in batches])
    moe = torch.cat([b["moe"] for b in batches])
    stored_dense = _stored(reference_store, "dense", "1.resid_post")
    stored_moe = _stored(reference_store, "moe", "0.mlp_out")
    assert not torch.equal(dense, stored_dense)  # shuffled
    assert torch.equal(_sorted_rows(dense), _sorted_rows(stored_dense))
    # rows stay paired: the same token's dense and moe rows travel together
    index = {tuple(r.tolist()): i for i, r in enumerate(stored_dense)}
    where = torch.tensor([index[tuple(r.tolist())] for r in dense])
    assert torch.equal(moe, stored_moe[where])


def test_seeded_order_and_a_new_order_each_pass(reference_store: StoreInfo) -> None:
    def first(reader: StoreReader) -> torch.Tensor:
        return next(iter(reader))["dense/0.mlp_out"]

    a, b = StoreReader(reference_store, 64, seed=1), StoreReader(reference_store, 64, seed=1)
    assert torch.equal(first(a), first(b))
    assert torch.equal(first(a), first(a))  # replayable: a resumed training run skips ahead
    assert not torch.equal(first(a), first(StoreReader(reference_store, 64, seed=2)))
    two = list(StoreReader(reference_store, 64, seed=1, passes=2, normalize=False))
    assert len(two) == 2 * 12 == len(StoreReader(reference_store, 64, passes=2))
    assert not torch.equal(two[0]["moe/0.mlp_out"], two[12]["moe/0.mlp_out"])  # new order
    rows = [torch.cat([b["moe/0.mlp_out"] for b in half]) for half in (two[:12], two[12:])]
    assert torch.equal(_sorted_rows(rows[0]), _sorted_rows(rows[1]))  # same rows each pass


def test_normalisation_is_applied(reference_store: StoreInfo) -> None:
    reader = StoreReader(reference_store, batch_size=720, sites={"moe": "1.resid_post"})
    (batch,) = list(reader)
    assert batch["moe"].norm(dim=-1).mean().item() == pytest.approx(48**0.5, rel=1e-5)


def test_memory_holds_at_most_shards_in_buffer_shards(reference_store, monkeypatch) -> None:
    loads: list[int] = []
    original = ReaderClass._load

    def counting(self, paths):
        loads.append(len(paths))
        return original(self, paths)

    monkeypatch.setattr(ReaderClass, "_load", counting)
    rows = sum(
        len(b["dense"])
        for b in StoreReader(reference_store, 32, sites={"dense": "0.mlp_out"}, shards_in_buffer=2)
    )
    assert loads == [2, 2, 2] and rows == 720


def test_reader_rejects_unknown_sites_and_shards(reference_store: StoreInfo) -> None:
    with pytest.raises(ConfigError, match=r"'0\.mlp_in'.*0\.mlp_out, 1\.resid_post"):
        StoreReader(reference_store, 8, sites={"dense": "0.mlp_in"})
    with pytest.raises(ConfigError, match="shard 9 does not exist"):
        StoreReader(reference_store, 8, shards=[9])
    held_out = StoreReader(reference_store, 1000, shards=[5], normalize=False)
    assert len(next(iter(held_out))["moe/1.resid_post"]) == 120


def test_streaming_yields_the_rows_the_store_holds(reference_store: StoreInfo) -> None:
    source = StreamingSource(
        pair(), SITES, make_sequences(), batch_size=64, config=CONFIG, normalize=False
    )
    batches = list(source)
    assert set(batches[0]) == {
        "dense/0.mlp_out",
        "dense/1.resid_post",
        "moe/0.mlp_out",
        "moe/1.resid_post",
    }
    assert sum(len(b["moe/0.mlp_out"]) for b in batches) == 720
    streamed = torch.cat([b["moe/1.resid_post"] for b in batches])
    stored = _stored(reference_store, "moe", "1.resid_post")
    torch.testing.assert_close(_sorted_rows(streamed), _sorted_rows(stored), rtol=1e-5, atol=1e-6)


def test_streaming_normalises_with_given_or_estimated_factors(reference_store) -> None:
    given = {"dense": 2.0, "moe": 0.5}
    source = StreamingSource(
        pair(),
        ["0.mlp_out"],
        make_sequences(n=16),
        16,
        StoreConfig(batch_sequences=4),
        factors=given,
    )
    raw = StreamingSource(
        pair(),
        ["0.mlp_out"],
        make_sequences(n=16),
        16,
        StoreConfig(batch_sequences=4),
        normalize=False,
    )
    for scaled, plain in zip(source, raw, strict=True):
        torch.testing.assert_close(scaled["moe"], plain["moe"] * 0.5)
    estimated = StreamingSource(pair(), ["0.mlp_out"], make_sequences(n=16), 16, buffer_batches=8)
    rows = torch.cat([b["dense"] for b in estimated])
    assert rows.norm(dim=-1).mean().item() == pytest.approx(32**0.5, rel=1e-4)
    assert set(estimated.factors()) == {"dense", "moe"}
