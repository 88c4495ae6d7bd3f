"""Per-process memory of a latent-sharded crosscoder against one process holding it all.

(a) one process trains the whole crosscoder for a few steps; (b) ``torchrun`` starts
``--shards`` processes (gloo on the CPU, NCCL on GPUs) that train the same crosscoder on the
same batches with its dictionary split over them (``train_sharded``). Each reports the bytes of
its parameters + Adam state (the tensors it holds between steps) and, on CUDA, its peak
allocated memory; the script prints each process's ratio to (a), the formula's prediction,
the seconds per step and the largest relative difference of the loss curves.

    .venv/bin/python benchmarks/bench_latent_sharding.py                 # 2 CPU processes
    .venv/bin/python benchmarks/bench_latent_sharding.py --shards 4 --dict-size 32768
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256, help="width of each of the two models")
    p.add_argument("--dict-size", type=int, default=8192)
    p.add_argument("--n-shared", type=int, default=256)
    p.add_argument("--k", type=float, default=32)
    p.add_argument("--batch", type=int, default=1024, help="global tokens per step")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # set when run by torchrun
    return p.parse_args(argv)


def setup(
    args: argparse.Namespace,
) -> tuple[Crosscoder, list[dict[str, torch.Tensor]], TrainConfig]:
    """The crosscoder, the batches (Gaussian activations) and the schedule every run uses."""
    cfg = CrosscoderConfig(
        models=("A", "B"),
        d_models=(args.d_model, args.d_model),
        dict_size=args.dict_size,
        k=args.k,
        n_shared=args.n_shared,
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.steps, 2, args.batch, args.d_model, generator=gen)
    batches = [{"A": a, "B": b} for a, b in x.unbind(0)]
    return Crosscoder(cfg), batches, TrainConfig(steps=args.steps, warmup_steps=1)


def measure(args: argparse.Namespace, shards: int | None) -> dict:
    """Train; the bytes held, the peak (CUDA), seconds per step after the first, the losses."""
    import crossdiff.crosscoder.train as train_module
    from crossdiff.crosscoder import sharded_train
    from crossdiff.runtime import resolve_device

    device = resolve_device(args.device)
    model, batches, cfg = setup(args)
    held: dict[str, int] = {}
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def timed(step):
        def run(module, optimizer, *rest):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            stats = step(module, optimizer, *rest)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            held["bytes"] = sharded_train.state_bytes(module, optimizer)
            return stats

        return run

    if shards is None:
        original = train_module.train_step
        train_module.train_step = timed(original)
        try:
            result = train_module.train(model.to(device), batches, cfg)
        finally:
            train_module.train_step = original
    else:
        original = sharded_train.sharded_step
        sharded_train.sharded_step = timed(original)
        try:
            result = sharded_train.train_sharded(model, batches, cfg, shards, device=device)
        finally:
            sharded_train.sharded_step = original
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "bytes": held["bytes"],
        "peak": peak,
        "step_s": sum(times[1:]) / max(1, len(times) - 1),
        "losses": [s.loss for s in result.history],
    }


def predicted_bytes(args: argparse.Namespace, lo: int, hi: int) -> int:
    """(params + 2 Adam moments) × 4 bytes of the process holding latents ``[lo, hi)``: their
    encoder columns and biases, their decoder rows (a tied row once, d_model wide), and the
    replicated decoder bias (the formula of docs/scaling.md)."""
    C, D, S = 2 * args.d_model, args.d_model, args.n_shared
    tied = max(0, min(hi, S) - lo)
    free = hi - lo - tied
    return 3 * 4 * (C * (hi - lo) + (hi - lo) + free * C + tied * D + C)


def worker(args: argparse.Namespace) -> None:
    """Under torchrun: measure this process's shard; the first process writes every record."""
    import torch.distributed as dist

    from crossdiff.crosscoder.distributed import finish_distributed, init_distributed
    from crossdiff.runtime import resolve_device

    init_distributed(resolve_device(args.device))
    record = measure(args, args.shards)
    records: list = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    if dist.get_rank() == 0:
        args.worker.write_text(json.dumps(records))
    finish_distributed()


def main(argv: list[str] | None = None) -> None:
    """Measure (a) here, (b) under torchrun, and print the table."""
    args = arguments(argv)
    torch.set_num_threads(1)
    if args.worker is not None:
        worker(args)
        return
    one = measure(args, None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.json"
        flags = list(argv if argv is not None else sys.argv[1:])
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [
            *launch,
            "--nproc_per_node",
            str(args.shards),
            __file__,
            *flags,
            "--worker",
            str(out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env)
        ranks = json.loads(out.read_text())
    print(
        f"crosscoder 2 x d_model {args.d_model}, {args.dict_size} latents ({args.n_shared} "
        f"tied), batch {args.batch}, {args.device}, fp32"
    )
    print(f"{'process':<12} {'params+Adam MB':>15} {'ratio':>7} {'predicted':>10} {'s/step':>7}")
    print(f"{'one':<12} {one['bytes'] / 2**20:>15.2f} {1:>7.3f} {'':>10} {one['step_s']:>7.3f}")
    from crossdiff.crosscoder.sharded import shard_bounds

    whole = predicted_bytes(args, 0, args.dict_size)
    bounds = shard_bounds(args.dict_size, args.shards) * (len(ranks) // args.shards)
    for r, (rec, (lo, hi)) in enumerate(zip(ranks, bounds, strict=True)):
        predicted = predicted_bytes(args, lo, hi) / whole
        print(
            f"{'process ' + str(r):<12} {rec['bytes'] / 2**20:>15.2f} "
            f"{rec['bytes'] / one['bytes']:>7.3f} {predicted:>10.3f} {rec['step_s']:>7.3f}"
        )
        if rec["peak"] is not None and one["peak"]:
            print(f"{'':<12} CUDA peak allocated ratio {rec['peak'] / one['peak']:.3f}")
    diff = max(abs(a - b) / abs(a) for a, b in zip(one["losses"], ranks[0]["losses"], strict=True))
    print(f"largest relative loss difference, sharded vs one process: {diff:.2e}")


if __name__ == "__main__":
    main()
