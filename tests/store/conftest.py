"""Fixtures of the store tests: the tiny model pair and one reference store built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossdiff.store import StoreConfig, StoreInfo, harvest
from tests.store.store_helpers import make_sequences, pair

SITES = ["0.mlp_out", "1.resid_post"]
CONFIG = StoreConfig(batch_sequences=4, shard_sequences=8)


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory: pytest.TempPathFactory) -> StoreInfo:
    """An uninterrupted harvest of the test pair (6 shards of 8 sequences of 16 tokens)."""
    out = tmp_path_factory.mktemp("store") / "reference"
    return harvest(pair(), SITES, make_sequences(), out, CONFIG)


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store (relative path -> bytes), temporary files included."""
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }
