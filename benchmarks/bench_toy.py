"""Models per second: a sweep of toy models trained as one batch vs one model at a time.

Both use ``crossdiff.toy.train.train_batch`` in the same process, on the same configs: (a) all M
models in one call (one leading model axis), (b) M calls of one model each. Prints models per
second of each and the ratio, and checks that (a) and (b) end at the same weights.

    .venv/bin/python benchmarks/bench_toy.py                    # 64 MoE models, n=5, m=2, E=4
    .venv/bin/python benchmarks/bench_toy.py --models 200 --experts 1 --features 2 --hidden 1
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from crossdiff.toy.config import ToyConfig
from crossdiff.toy.train import train_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--features", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=2)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = ToyConfig(
        n_features=args.features, d_hidden=args.hidden, n_experts=args.experts, k=args.k,
        steps=args.steps, batch_size=args.batch_size,
    )  # fmt: skip
    configs = [
        dataclasses.replace(base, sparsity=round(0.9 * i / args.models, 4), seed=i % 4)
        for i in range(args.models)
    ]
    train_batch(configs[:2], args.device)  # warm-up

    def timed(run):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    batched, batched_s = timed(lambda: train_batch(configs, args.device))
    alone, alone_s = timed(lambda: [train_batch([c], args.device) for c in configs])
    worst = max(
        (one.params.W_MEHN[0] - batched.params.W_MEHN[i]).abs().max().item()
        for i, one in enumerate(alone)
    )
    print(
        f"{args.models} models (n={args.features}, m={args.hidden}, E={args.experts}, "
        f"k={args.k}), {args.steps} steps of {args.batch_size}, {args.device}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"batched:        {args.models / batched_s:9.2f} models/s  ({batched_s:.2f} s)")
    print(f"one at a time:  {args.models / alone_s:9.2f} models/s  ({alone_s:.2f} s)")
    print(f"speed-up:       {alone_s / batched_s:9.1f}x")
    print(f"largest weight difference batched vs alone: {worst:.2e}")


if __name__ == "__main__":
    main()
