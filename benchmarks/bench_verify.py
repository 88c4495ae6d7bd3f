"""What verified reads cost: hashing every shard against its recorded SHA-256, set against the
harvest that wrote the store and against a plain read of the same bytes.

Harvests ``--sequences`` random-token sequences through the in-repo dense/MoE pair of the
quickstart (preset ``tiny``, vocab 8192, context 128, site ``2.mlp_out``) into a fresh store,
timing it; then, with the process's record of verified files cleared, times ``open_store``
(which verifies every shard: size, header, SHA-256), a plain read of every shard's bytes, and a
second ``open_store`` (files already verified in this process are not hashed again). Prints
one JSON object; ``verify_share_of_harvest`` is the verification's time as a share of the
harvest's (the goal: under 0.10).

    .venv/bin/python benchmarks/bench_verify.py [--sequences 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build_pair(vocab: int, n_ctx: int) -> dict:
    """The quickstart's dense and MoE models (preset ``tiny``, random weights), as adapters."""
    from crossdiff.adapters import adapt
    from crossdiff.models.build import build_model
    from crossdiff.models.config import preset
    from crossdiff.plugins import create_plugin_manager

    manager = create_plugin_manager()
    adapters = {}
    for arch in ("dense", "moe"):
        config, _ = preset("tiny", arch, vocab, n_ctx)
        adapters[arch] = adapt(build_model(config).eval(), manager)
    return adapters


def read_seconds(paths: list[Path]) -> float:
    """Seconds to read every byte of ``paths`` (4 MiB blocks, no hashing)."""
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 22):
                pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--site", default="2.mlp_out")
    args = parser.parse_args()

    from crossdiff.corpus import PackedSequences
    from crossdiff.store import StoreConfig, harvest, open_store
    from crossdiff.verify import forget_verified

    vocab, n_ctx = 8192, 128
    adapters = build_pair(vocab, n_ctx)
    ids = np.random.default_rng(0).integers(0, vocab, (args.sequences, n_ctx), dtype=np.int32)
    sequences = PackedSequences(ids, np.asarray(["random"] * args.sequences))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        started = time.perf_counter()
        harvest(adapters, [args.site], sequences, store, StoreConfig(shard_sequences=64))
        harvest_s = time.perf_counter() - started
        paths = open_store(store).shard_paths()
        size = sum(p.stat().st_size for p in paths)
        verify, read, cached = [], [], []
        for _ in range(args.repeats):
            read.append(read_seconds(paths))
            forget_verified()
            started = time.perf_counter()
            open_store(store)
            verify.append(time.perf_counter() - started)
            started = time.perf_counter()
            open_store(store)
            cached.append(time.perf_counter() - started)
    mb = size / 1e6
    verify_s, read_s = statistics.median(verify), statistics.median(read)
    print(
        json.dumps(
            {
                "sequences": args.sequences,
                "shards": len(paths),
                "store_mb": round(mb, 1),
                "harvest_s": round(harvest_s, 2),
                "harvest_mb_per_s": round(mb / harvest_s, 1),
                "verify_s": round(verify_s, 3),
                "verify_mb_per_s": round(mb / verify_s, 1),
                "plain_read_mb_per_s": round(mb / read_s, 1),
                "second_open_s": round(statistics.median(cached), 4),
                "verify_share_of_harvest": round(verify_s / harvest_s, 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
