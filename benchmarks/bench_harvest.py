"""Harvest throughput of the in-repo dense/MoE pair, as a ratio to their bare forward passes.

In one process, on the same token batches: (a) the bare forward passes of both models
(``model(tokens, return_type=None)``: every block, no hooks, no unembedding), and (b) a full
harvest of the chosen sites into a store (capture through the TransformerLens adapter, NaN
checks, norm sums, dtype cast, atomic shard writes). The ratio (a)/(b) of wall times is the
harvest's share of forward speed; the goal is >= 0.85. ``--repeats`` paired trials (forward and
harvest back to back, alternating which goes first) give one ratio each; the median is reported,
so load from other processes, drifting during the run, hurts both sides alike. The share of the
harvest's time spent inside the adapters' capture is printed too: it isolates what the store
itself costs, whatever the load.

Then peak memory (max RSS) of a harvest at two sizes, and of one shuffled reader pass over each
resulting store, each in a fresh child process: neither may grow with the number of tokens.

    .venv/bin/python benchmarks/bench_harvest.py [--sequences 64] [--repeats 8] [--site 4.mlp_out]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crossdiff.corpus import PackedSequences


def build_pair(vocab: int, n_ctx: int, preset_name: str) -> dict[str, torch.nn.Module]:
    """The in-repo dense and MoE models of ``preset_name`` (random weights), in eval mode."""
    from crossdiff.models.build import build_model
    from crossdiff.models.config import preset

    pair = {}
    for arch in ("dense", "moe"):
        config, _ = preset(preset_name, arch, vocab, n_ctx)
        pair[arch] = build_model(config).eval()
    return pair


def token_sequences(n: int, context: int, vocab: int, corpus: Path | None) -> PackedSequences:
    """``n`` sequences: from a built corpus's train split, or random tokens."""
    if corpus is not None:
        from crossdiff.corpus import load_sequences

        train = load_sequences(corpus)["train"]
        rows = np.random.default_rng(0).permutation(len(train.input_ids))[:n]
        return PackedSequences(train.input_ids[rows, :context], train.domains[rows])
    ids = np.random.default_rng(0).integers(0, vocab, (n, context), dtype=np.int32)
    return PackedSequences(ids, np.asarray(["random"] * n))


def bare_forward_seconds(
    models: dict, sequences: PackedSequences, batch: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of both models' forward passes over every batch of ``sequences``."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for i in range(0, len(sequences.input_ids), batch):
            tokens = torch.from_numpy(sequences.input_ids[i : i + batch]).long()  # [B, P]
            for model in models.values():
                model(tokens, return_type=None)
    return time.perf_counter() - start, time.process_time() - cpu


def harvest_seconds(
    models: dict, sites: list[str], sequences: PackedSequences, args, keep: Path | None = None
) -> tuple[float, float, float]:
    """(wall, CPU, wall inside the adapters' capture) seconds of a complete harvest.

    The store goes to a temporary directory, deleted after, or to ``keep``.
    """
    from crossdiff.adapters import adapt
    from crossdiff.plugins import create_plugin_manager
    from crossdiff.store import StoreConfig, harvest

    manager = create_plugin_manager()
    adapters = {name: adapt(model, manager) for name, model in models.items()}
    in_capture = [0.0]
    for adapter in adapters.values():
        adapter.capture = _timed(adapter.capture, in_capture)
    config = StoreConfig(
        dtype=args.dtype, batch_sequences=args.batch, shard_sequences=args.shard_sequences
    )
    with tempfile.TemporaryDirectory(prefix="crossdiff-bench-", dir=args.tmp) as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        info = harvest(adapters, sites, sequences, keep or Path(tmp) / "store", config)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert info.complete and info.tokens == len(sequences.input_ids) * (
            sequences.input_ids.shape[1] - 1
        )
    return wall, cpu, in_capture[0]


def _timed(function, total: list[float]):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    return timed


def throughput(args: argparse.Namespace) -> dict[str, float]:
    """Paired trials of bare forward and harvest on the same sequences, order alternating.

    Per trial the ratio forward/harvest; the median over trials resists the load of other
    processes drifting during the run (each trial's two runs are close in time).
    """
    models = build_pair(args.vocab, args.context, args.preset)
    sequences = token_sequences(args.sequences, args.context, args.vocab, args.corpus)
    warm = token_sequences(args.batch, args.context, args.vocab, None)
    bare_forward_seconds(models, warm, args.batch)
    forward, harvest = [], []
    for trial in range(args.repeats):
        runs = [
            lambda: forward.append(bare_forward_seconds(models, sequences, args.batch)),
            lambda: harvest.append(harvest_seconds(models, args.site, sequences, args)),
        ]
        for run in runs if trial % 2 == 0 else runs[::-1]:
            run()
    tokens = len(sequences.input_ids) * args.context
    ratios = [f[0] / h[0] for f, h in zip(forward, harvest, strict=True)]
    cpu_ratios = [f[1] / h[1] for f, h in zip(forward, harvest, strict=True)]
    return {
        "tokens": tokens,
        "forward_s": float(np.median([f[0] for f in forward])),
        "harvest_s": float(np.median([h[0] for h in harvest])),
        "ratio": float(np.median(ratios)),
        "ratios": ratios,
        "best_ratio": min(f[0] for f in forward) / min(h[0] for h in harvest),
        "cpu_ratio": float(np.median(cpu_ratios)),
        "capture_share": float(np.median([h[2] / h[0] for h in harvest])),
    }


def peak_memory_child(args: argparse.Namespace) -> None:
    """(child mode) Harvest ``--sequences`` sequences into ``--keep``; print peak RSS (MiB)."""
    models = build_pair(args.vocab, args.context, args.preset)
    sequences = token_sequences(args.sequences, args.context, args.vocab, args.corpus)
    seconds, _, _ = harvest_seconds(models, args.site, sequences, args, keep=args.keep)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"sequences": args.sequences, "peak_mib": peak, "seconds": seconds}))


def read_memory_child(args: argparse.Namespace) -> None:
    """(child mode) One shuffled pass over the store ``--keep``; print rows and peak RSS."""
    from crossdiff.store import StoreReader

    rows = sum(len(next(iter(b.values()))) for b in StoreReader(args.keep, batch_size=4096))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "peak_mib": peak}))


def peak_memory(args: argparse.Namespace, sizes: list[int]) -> list[dict]:
    """Peak RSS of a harvest, then of one reader pass over its store, at each size.

    Each runs in a fresh process, so each peak is its own.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossdiff-bench-", dir=args.tmp) as tmp:
        for size in sizes:
            store = Path(tmp) / f"store-{size}"
            command = [sys.executable, __file__, "--child-memory", "--sequences", str(size)]
            command += ["--preset", args.preset, "--batch", str(args.batch)]
            command += ["--dtype", args.dtype, "--shard-sequences", str(args.shard_sequences)]
            command += [arg for site in args.site for arg in ("--site", site)]
            command += ["--keep", str(store)]
            if args.corpus:
                command += ["--corpus", str(args.corpus)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            row = _child(command)
            row["read_peak_mib"] = _child(
                [sys.executable, __file__, "--child-read", "--keep", str(store)]
            )["peak_mib"]
            rows.append(row)
    return rows


def _child(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print the throughput ratio and the peak memory at two sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="in-repo model preset")
    parser.add_argument("--sequences", type=int, default=64, help="sequences per trial")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=32, help="sequences per forward")
    parser.add_argument("--shard-sequences", type=int, default=64)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--site", action="append", help="sites (default 4.mlp_out)")
    parser.add_argument("--repeats", type=int, default=8, help="paired trials")
    parser.add_argument("--corpus", type=Path, help="a built corpus (default: random tokens)")
    parser.add_argument("--tmp", type=Path, help="where the temporary stores go")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=(128, 1024), help="sequences")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-read", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.site = args.site or ["4.mlp_out"]
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        peak_memory_child(args)
        return
    if args.child_read:
        read_memory_child(args)
        return
    print(
        f"torch threads {torch.get_num_threads()}, preset {args.preset!r}, sites {args.site}, "
        f"dtype {args.dtype}, batch {args.batch}x{args.context}"
    )
    result = throughput(args)
    tokens = result["tokens"]
    print(f"{args.repeats} paired trials of {tokens:,} tokens (medians):")
    print(f"bare forward (dense + moe): {tokens / result['forward_s']:,.0f} tok/s")
    print(f"harvest to disk:            {tokens / result['harvest_s']:,.0f} tok/s")
    verdict = "meets" if result["ratio"] >= 0.85 else "BELOW"
    print(
        f"ratio harvest/forward:      {result['ratio']:.3f} ({verdict} the 0.85 goal); "
        f"per trial {', '.join(f'{r:.2f}' for r in result['ratios'])}"
    )
    print(f"ratio of best times:        {result['best_ratio']:.3f}")
    print(f"ratio of CPU time:          {result['cpu_ratio']:.3f}")
    print(
        f"harvest time inside the adapters' capture: {result['capture_share']:.1%} "
        "(the rest is the store: checks, norms, cast, waiting on the writer)"
    )
    if args.no_memory:
        return
    rows = peak_memory(args, list(args.memory_sizes))
    for row in rows:
        tokens = row["sequences"] * (args.context - 1)
        print(
            f"peak RSS harvesting {tokens:>9,} tokens: {row['peak_mib']:,.0f} MiB; "
            f"reading them back in one shuffled pass: {row['read_peak_mib']:,.0f} MiB"
        )
    size_ratio = args.memory_sizes[1] / args.memory_sizes[0]
    for key, what in (("peak_mib", "harvest"), ("read_peak_mib", "reader")):
        growth = rows[1][key] / rows[0][key]
        print(f"{what} peak memory x{growth:.3f} for x{size_ratio:.0f} tokens")


if __name__ == "__main__":
    main()
