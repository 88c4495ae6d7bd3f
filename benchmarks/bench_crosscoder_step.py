"""Time one crosscoder training step against the dense work of one plain autoencoder step.

(a) one full step of the crosscoder engine: forward, BatchTopK, loss with aux-k, backward,
    Adam -- measured twice: with a quarter of the latents marked dead (aux-k runs on them) and
    with none dead (aux-k has nothing to do);
(b) in the same process, the five dense matrix products of one step of a dense autoencoder of the
    same size (encoder and decoder forward, the decoder-weight, latent and encoder-weight grads).
The (a) and (b) runs alternate. Prints a/b for both cases by wall-clock time (the goal) and by
the process's CPU time (less disturbed by other jobs on a shared machine) in each of three
repetitions (load average before/after each) and their medians, the aux-k path rule (measured
in the warm-up) and the path each case took, activations per second, peak memory, and the
held-out FVE of the sparse engine and of the plain dense
implementation (kernels="dense") after the same steps on the same planted data.

    .venv/bin/python benchmarks/bench_crosscoder_step.py            # default size
    .venv/bin/python benchmarks/bench_crosscoder_step.py --fve-steps 0   # timing only
    .venv/bin/python benchmarks/bench_crosscoder_step.py --fve-steps 0 --repetitions 0 --profile 15
    .venv/bin/python benchmarks/bench_crosscoder_step.py --fve-steps 0 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable

# Before torch loads OpenMP: threads that sleep instead of spinning at barriers. On a machine
# shared with other jobs, spinning threads of the many small parallel regions of a sparse step
# fight for the cores (we measured 2-3x slower steps); it applies to (a) and (b) alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.distributed import Collectives
from crossdiff.crosscoder.evaluate import evaluate
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures
from crossdiff.crosscoder.train import TrainState, make_optimizer, train, train_step
from crossdiff.runtime import retain_freed_memory


def planted_source(d: int) -> PlantedFeatures:
    """Planted features at ``d_model = d``: ~30 active per token, shared and exclusive."""
    return PlantedFeatures(
        PlantedConfig(
            d_models=(d, d),
            n_shared=1000,
            n_exclusive=(500, 500),
            density_range=(0.005, 0.03),
            noise=0.05,
            seed=0,
        )
    )


def dense_products(x: torch.Tensor, W_enc: torch.Tensor, W_dec: torch.Tensor, g: torch.Tensor):
    """The five dense matmuls of one dense-autoencoder step."""
    f = (x @ W_enc).relu_()  # encoder forward            [B, L]
    recon = f @ W_dec  # decoder forward                   [B, C]
    grad_W_dec = f.T @ g  # decoder weight grad            [L, C]
    grad_f = g @ W_dec.T  # latent grad                    [B, L]
    grad_W_enc = x.T @ grad_f  # encoder weight grad       [C, L]
    return recon, grad_W_dec, grad_W_enc


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    batches: list,
    state: TrainState,
    tcfg: TrainConfig,
    dense: Callable[[], object],
    repeats: int,
) -> dict[str, object]:
    """One repetition: ``repeats`` alternating runs of (a) in both cases and of (b); medians of
    wall and CPU time, the aux-k path each case took, the load average before and after."""
    coll = Collectives()
    load_before = os.getloadavg()[0]
    times: dict[str, list[tuple[float, float]]] = {"quarter": [], "none": [], "b": []}
    aux: dict[str, float] = {}
    paths: dict[str, str | None] = {}
    for r in range(repeats):
        for case in ("quarter", "none"):
            set_dead(state, case)
            state.aux_rule.last_path = None
            holder = {}
            batch = batches[r % len(batches)]
            times[case].append(
                timed(
                    lambda b=batch, h=holder: h.update(
                        s=train_step(model, opt, b, state, tcfg, coll)
                    )
                )
            )
            aux[case], paths[case] = holder["s"].aux, state.aux_rule.last_path
            times["b"].append(timed(dense))
    assert aux["quarter"] > 0 and aux["none"] == 0, f"aux-k did not run as planned: {aux}"
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    return {"med": med, "paths": paths, "load": (load_before, os.getloadavg()[0])}


def set_dead(state: TrainState, case: str) -> None:
    """Mark every fourth latent dead (``quarter``) or none (``none``)."""
    state.tokens_since_fired.zero_()
    if case == "quarter":
        state.tokens_since_fired[::4] = 10**9


def profile_step(
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    batches: list,
    state: TrainState,
    tcfg: TrainConfig,
    case: str,
    rows: int,
) -> None:
    """Print the ops of three steps by self CPU time (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    coll = Collectives()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            set_dead(state, case)
            train_step(model, opt, batches[i % len(batches)], state, tcfg, coll)
    print(f"profile of 3 steps, {case} dead, self CPU time per op:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    """Run the benchmark and print its figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--dict-size", type=int, default=4096)
    p.add_argument("--k", type=float, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="runs per repetition (medians)")
    p.add_argument("--repetitions", type=int, default=3, help="repetitions (median of each)")
    p.add_argument("--fve-steps", type=int, default=100)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--profile", type=int, default=0, metavar="ROWS", help="print the top ops of the step"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as train() does: the step as training runs it, (a) and (b) alike
    d, B = args.d_model, args.batch
    source = planted_source(d)
    batches = list(source.batches(B, 4, seed=1))
    cfg = CrosscoderConfig(
        ("A", "B"), (d, d), args.dict_size, args.k, n_shared=args.dict_size // 16, dtype=args.dtype
    )
    model = Crosscoder(cfg)
    model.fit_input_scales_(batches[0])
    tcfg = TrainConfig(steps=10**6, warmup_steps=10, dead_tokens=10**9)
    opt = make_optimizer(model, tcfg)
    state = TrainState(tokens_since_fired=torch.zeros(cfg.dict_size, dtype=torch.long))
    coll = Collectives()
    for i in range(4):  # warm-up: sets θ; the quarter-dead steps measure aux-k's path rule
        set_dead(state, ("none", "quarter")[i % 2])
        train_step(model, opt, batches[i % 4], state, tcfg, coll)
    C, L = 2 * d, args.dict_size
    dtype = getattr(torch, args.dtype)
    x = torch.randn(B, C, dtype=dtype)
    W_enc = (torch.randn(C, L) / C**0.5).to(dtype)
    W_dec, g = (torch.randn(L, C) / L**0.5).to(dtype), torch.randn(B, C, dtype=dtype)
    dense_products(x, W_enc, W_dec, g)
    print(f"size: 2 models x d_model {d}, dictionary {L}, k {args.k}, batch {B}, {args.dtype}, "
          f"{args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"aux_k {max(cfg.d_models) // 2}")  # fmt: skip
    print(f"aux-k path rule: {state.aux_rule.describe()}")
    if args.profile:
        for case in ("none", "quarter"):
            profile_step(model, opt, batches, state, tcfg, case, args.profile)
    reps = []
    for rep in range(args.repetitions):
        res = measure(
            model, opt, batches, state, tcfg, lambda: dense_products(x, W_enc, W_dec, g),
            args.repeats,
        )  # fmt: skip
        reps.append(res)
        (b_wall, b_cpu), (lb, la) = res["med"]["b"], res["load"]
        print(f"repetition {rep + 1}: load average {lb:.1f} before / {la:.1f} after; "
              f"(b) five dense matmuls of a dense AE step {b_wall * 1e3:.1f} ms "
              f"(CPU {b_cpu * 1e3:.1f} ms), medians of {args.repeats}")  # fmt: skip
        for case, label in (("quarter", "a quarter dead"), ("none", "none dead")):
            a_wall, a_cpu = res["med"][case]
            print(f"  (a) {label}: {a_wall * 1e3:.1f} ms (CPU {a_cpu * 1e3:.1f} ms); "
                  f"a/b = {a_wall / b_wall:.3f} (CPU time: {a_cpu / b_cpu:.3f}); "
                  f"{B / a_wall:,.0f} activations/s; aux-k path {res['paths'][case]}")  # fmt: skip
    for case, label in (("quarter", "a quarter dead"), ("none", "none dead")) if reps else ():
        walls = [r["med"][case][0] / r["med"]["b"][0] for r in reps]
        cpus = [r["med"][case][1] / r["med"]["b"][1] for r in reps]
        each = (
            f"wall {' '.join(f'{w:.3f}' for w in walls)}, CPU {' '.join(f'{c:.3f}' for c in cpus)}"
        )
        print(f"median of {len(reps)} repetitions, {label}: a/b = {statistics.median(walls):.3f}"
              f" (CPU time: {statistics.median(cpus):.3f}); {each}")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of the process): {peak:.0f} MiB")
    if args.fve_steps:
        held_out = list(source.batches(B, 2, seed=999))
        for kernels in ("sparse", "dense"):
            m = Crosscoder(cfg)
            t0 = time.perf_counter()
            tc = TrainConfig(
                steps=args.fve_steps, lr=3e-3, warmup_steps=10, kernels=kernels, dead_tokens=B * 20
            )
            train(m, source.batches(B, args.fve_steps, seed=2), tc)
            secs = time.perf_counter() - t0
            res = evaluate(m, held_out)
            print(f"{kernels:>6} kernels, {args.fve_steps} steps ({secs:.0f} s): held-out "
                  f"FVE A {res.fve['A']:.4f} B {res.fve['B']:.4f} pooled {res.fve_pooled:.4f}, "
                  f"L0 {res.l0:.1f}, dead {res.dead_fraction:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
