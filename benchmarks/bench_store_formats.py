"""Measure candidate on-disk formats for activation shards: write and read throughput.

Each format writes the same shards (token ids, positions, and one activation matrix per model),
fsyncs them, evicts them from the page cache (``posix_fadvise``), and reads them back whole.
A second read test gathers random rows (what a shuffling reader does) from a memory map where the
format allows it. Prints MB/s per format; docs/store.md records the numbers and the choice.

    .venv/bin/python benchmarks/bench_store_formats.py [--tokens 32768] [--shards 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def make_shard(tokens: int, dims: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """One shard's arrays: int32 token ids and positions, float32 activations per model."""
    rng = np.random.default_rng(seed)
    arrays = {
        "tokens": rng.integers(0, 8192, tokens, dtype=np.int32),
        "positions": rng.integers(0, 128, tokens, dtype=np.int32),
    }
    for m, dim in enumerate(dims):
        arrays[f"acts_{m}"] = rng.standard_normal((tokens, dim), dtype=np.float32)  # [N, D]
    return arrays


def _evict(path: Path) -> None:
    """Flush ``path`` (file or directory) to disk and drop it from the page cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ formats


def npy_write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A directory with one ``.npy`` file per array."""
    path.mkdir()
    for name, array in arrays.items():
        np.save(path / f"{name}.npy", array)
    return path


def npy_read(path: Path) -> dict[str, np.ndarray]:
    """Read every array of a ``.npy`` shard into memory."""
    return {p.stem: np.load(p) for p in sorted(path.glob("*.npy"))}


def npy_gather(path: Path, rows: np.ndarray) -> np.ndarray:
    """Random rows of the first model's activations through a memory map."""
    return np.load(path / "acts_0.npy", mmap_mode="r")[rows]


def safetensors_write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """One ``.safetensors`` file per shard."""
    from safetensors.numpy import save_file

    file = path.with_suffix(".safetensors")
    save_file(arrays, str(file))
    return file


def safetensors_read(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors shard into memory."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def safetensors_gather(path: Path, rows: np.ndarray) -> np.ndarray:
    """Random rows of the first model's activations (safetensors reads the whole tensor)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return handle.get_tensor("acts_0")[rows]


def arrow_write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """One Arrow IPC file per shard, activations as fixed-size-list columns."""
    import pyarrow as pa

    columns = {}
    for name, array in arrays.items():
        if array.ndim == 2:
            flat = pa.array(array.reshape(-1))
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, array.shape[1])
        else:
            columns[name] = pa.array(array)
    table = pa.table(columns)
    file = path.with_suffix(".arrow")
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return file


def arrow_read(path: Path) -> dict[str, np.ndarray]:
    """Read every column of an Arrow IPC shard into numpy arrays."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.FixedSizeListType):
            flat = column.flatten().to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(len(column), column.type.list_size).copy()
        else:
            out[name] = column.to_numpy(zero_copy_only=False).copy()
    return out


def arrow_gather(path: Path, rows: np.ndarray) -> np.ndarray:
    """Random rows of the first model's activations through Arrow's memory map."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        column = pa.ipc.open_file(source).read_all().column("acts_0").combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=True)
        return flat.reshape(len(column), column.type.list_size)[rows]


FORMATS: dict[str, tuple[Callable, Callable, Callable]] = {
    "npy (directory of .npy, memmap)": (npy_write, npy_read, npy_gather),
    "safetensors (one file)": (safetensors_write, safetensors_read, safetensors_gather),
    "arrow IPC (one file)": (arrow_write, arrow_read, arrow_gather),
}


def run(tokens: int, n_shards: int, dims: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Write, cold-read and gather ``n_shards`` shards in each format; MB/s per operation."""
    shards = [make_shard(tokens, dims, seed) for seed in range(n_shards)]
    megabytes = sum(a.nbytes for shard in shards for a in shard.values()) / 1e6
    act_mb = sum(shard["acts_0"][: tokens // 8].nbytes for shard in shards) / 1e6
    rows = np.sort(np.random.default_rng(0).choice(tokens, tokens // 8, replace=False))
    results = {}
    root = Path(tempfile.mkdtemp(prefix="crossdiff-formats-", dir=os.environ.get("BENCH_DIR")))
    try:
        for label, (write, read, gather) in FORMATS.items():
            work = root / label.split()[0]
            work.mkdir()
            start = time.perf_counter()
            paths = []
            for i, shard in enumerate(shards):
                paths.append(write(work / f"shard{i:03d}", shard))
                _evict(paths[-1])  # includes the fsync: the data is on disk
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            loaded = [read(path) for path in paths]
            read_s = time.perf_counter() - start
            for arrays, shard in zip(loaded, shards, strict=True):
                assert np.array_equal(arrays["acts_1"], shard["acts_1"])
            del loaded
            for path in paths:
                _evict(path)
            start = time.perf_counter()
            picked = [gather(path, rows) for path in paths]
            gather_s = time.perf_counter() - start
            for rows_read, shard in zip(picked, shards, strict=True):
                assert np.array_equal(rows_read, shard["acts_0"][rows])
            results[label] = {
                "write MB/s": megabytes / write_s,
                "read MB/s": megabytes / read_s,
                "gather 1/8 rows (MB/s of rows)": act_mb / gather_s,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    """Print the table of throughputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per shard")
    parser.add_argument("--shards", type=int, default=6, help="shards per format")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 384], help="d per model")
    args = parser.parse_args()
    results = run(args.tokens, args.shards, tuple(args.dims))
    size = sum(args.dims) * 4 * args.tokens * args.shards / 1e6
    print(f"{args.shards} shards x {args.tokens} tokens, d={args.dims}, fp32 (~{size:.0f} MB)")
    columns = next(iter(results.values())).keys()
    print(f"{'format':<34}" + "".join(f"{c:>32}" for c in columns))
    for label, row in results.items():
        print(f"{label:<34}" + "".join(f"{v:>32.0f}" for v in row.values()))


if __name__ == "__main__":
    main()
