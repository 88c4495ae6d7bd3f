"""Which crosscoder variant finds the true model-exclusive features? Planted ground truth.

For every planted setting (easy; a shared feature much weaker in one model; exclusive features
denser than shared ones; correlated pairs of exclusive features) and every variant

    free          free latents only, BatchTopK alone (no sparsity term)
    free+l1       free latents with the decoder-norm sparsity term λ·Σ_i f_i·Σ_m‖d_i^m‖
    designated    a designated shared block (tied decoder) + free latents, with the term
    dedicated     designated shared + dedicated A-only / B-only blocks + free latents, no term

it trains a crosscoder on planted activations for several seeds and prints, averaged over seeds:
precision and recall of the exclusive classes (A_only and B_only pooled by averaging), the share
of planted features recovered with their own class, and the mean relative density error per
planted class (``crossdiff.crosscoder.groundtruth.score_classes``).

    .venv/bin/python benchmarks/bench_variants.py                 # the table in docs/crosscoder.md
    .venv/bin/python benchmarks/bench_variants.py --quick   # one seed, 300 steps: a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.groundtruth import score_classes
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures
from crossdiff.crosscoder.train import train

D = 32
COMMON = dict(d_models=(D, D), magnitude_range=(0.5, 1.5))
SETTINGS = {
    "easy": PlantedConfig(n_shared=12, n_exclusive=(12, 12), density_range=(0.03, 0.1), **COMMON),
    "weak-shared": PlantedConfig(
        n_shared=6,
        n_weak_shared=8,
        weak_scale=0.15,
        n_exclusive=(10, 10),
        density_range=(0.03, 0.1),
        **COMMON,
    ),
    "dense-exclusive": PlantedConfig(
        n_shared=12,
        n_exclusive=(10, 10),
        density_range=(0.01, 0.04),
        exclusive_density_range=(0.1, 0.25),
        **COMMON,
    ),
    "correlated-pairs": PlantedConfig(
        n_shared=10,
        n_exclusive=(6, 6),
        n_correlated_pairs=6,
        pair_correlation=0.8,
        density_range=(0.03, 0.1),
        **COMMON,
    ),
}
"""The planted settings (their ``seed`` is replaced by the run's seed)."""

LAMBDA = 0.3
"""The sparsity term's λ where a variant has it (the quickstart's)."""
VARIANTS = {
    "free": dict(n_shared=0, sparsity_coeff=0.0),
    "free+l1": dict(n_shared=0, sparsity_coeff=LAMBDA),
    "designated": dict(n_shared=16, sparsity_coeff=LAMBDA),
    "dedicated": dict(n_shared=16, n_dedicated=(24, 24), sparsity_coeff=0.0),
}
"""Crosscoder settings of each variant (dictionary size and k are common)."""
DICT_SIZE = 128


def run_one(setting: str, variant: str, seed: int, steps: int) -> dict[str, float]:
    """Train one variant on one planted setting and score its classes."""
    import dataclasses

    planted = PlantedFeatures(dataclasses.replace(SETTINGS[setting], seed=seed))
    k = float(planted.densities.sum())
    cfg = CrosscoderConfig(
        models=("A", "B"), d_models=(D, D), dict_size=DICT_SIZE, k=k, seed=seed,
        **VARIANTS[variant],
    )  # fmt: skip
    model = Crosscoder(cfg)
    tcfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=50, dead_tokens=20_000, aux_k=16)
    train(model, planted.batches(256, steps, seed=100 + seed), tcfg)
    scores = score_classes(model, planted)
    exclusive = [c for c in scores.recall if c.endswith("_only")]
    out = {
        "precision": _mean([scores.precision[c] for c in exclusive]),
        "recall": _mean([scores.recall[c] for c in exclusive]),
        "with_class": scores.recovered_with_class,
        "density_err_shared": scores.density_error["shared"],
        "density_err_excl": _mean([scores.density_error[c] for c in exclusive]),
    }
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


QUICK = {"seeds": 1, "steps": 300}
"""``--quick``: one seed and 300 steps, for a look in a few minutes (docs/crosscoder.md has its
figures beside the full table's)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=800, help="training steps (default 800)")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"a quick look: {QUICK['seeds']} seed, {QUICK['steps']} steps (overrides both)",
    )  # fmt: skip
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = QUICK["seeds"], QUICK["steps"]
    torch.set_num_threads(1)
    start = time.perf_counter()
    columns = ["precision", "recall", "with_class", "density_err_shared", "density_err_excl"]
    print(
        f"planted ground truth: d_model {D}, dict {DICT_SIZE}, {args.steps} steps x 256 tokens,"
        f" seeds 0..{args.seeds - 1}; mean (min-max) over seeds"
    )
    print(f"| setting | variant | {' | '.join(columns)} |")
    print("|---|---|" + "---|" * len(columns))
    for setting in args.settings:
        for variant in args.variants:
            runs = [run_one(setting, variant, seed, args.steps) for seed in range(args.seeds)]
            cells = []
            for column in columns:
                values = [r[column] for r in runs if not math.isnan(r[column])]
                if not values:
                    cells.append("–")
                    continue
                mean = statistics.fmean(values)
                cells.append(f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})")
            print(f"| {setting} | {variant} | {' | '.join(cells)} |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
