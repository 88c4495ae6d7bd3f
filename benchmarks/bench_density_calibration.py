"""The density verdicts on planted truth: does the chain crosscoder → classes → density see a
planted "exclusive sparser than shared", a "denser" and a "no difference"?

For every setting and seed it runs ``crossdiff.crosscoder.calibration.run_calibration`` (train,
``latent_classes``, the ``density`` analysis's measurement and tests) and prints one row per
exclusive class: class precision / recall, the planted ordering and ratio (median planted
density class / shared), the measured ratio with its 95% bootstrap interval, the one-sided and
two-sided p-values and whether the planted ordering is recovered (one-sided p < 0.05 in the
planted direction; two-sided p ≥ 0.05 for "no difference"), under the calibrated rule and the
raw one (every firing of every live latent).

    .venv/bin/python benchmarks/bench_density_calibration.py     # the table in docs/crosscoder.md
    .venv/bin/python benchmarks/bench_density_calibration.py --settings medium-l0.3 \
        medium-l0.3-null --seeds 3                                 # the quickstart's λ
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from crossdiff.crosscoder.calibration import CalibrationSetting, run_calibration, small_setting
from crossdiff.crosscoder.synthetic import PlantedConfig


def medium(scale: tuple[float, float], name: str) -> CalibrationSetting:
    """The issue's regime scaled down: 96 features in width 32 (48 shared, 24 + 24 exclusive),
    dictionary 256, k 8 (≈ 4× L0), a designated block of 16, the quickstart's λ = 0.3 and a
    learning rate of 3e-3, 1,000 steps of 256 tokens."""
    planted = PlantedConfig(
        d_models=(32, 32),
        n_shared=48,
        n_exclusive=(24, 24),
        density_range=(0.005, 0.05),
        exclusive_density_scale=scale,
    )
    options = dict(dict_size=256, k=8, n_shared=16, sparsity_coeff=0.3, lr=3e-3, steps=1000)
    return CalibrationSetting(name, planted, **options)


SETTINGS = {
    "small": small_setting((0.5, 2.0), "small"),
    "small-null": small_setting((1.0, 1.0), "small-null"),
    "medium-l0.3": medium((0.5, 2.0), "medium-l0.3"),
    "medium-l0.3-null": medium((1.0, 1.0), "medium-l0.3-null"),
}
"""The planted cases (their seed is replaced by the run's)."""


def fmt(value: float | None, digits: int = 2) -> str:
    return (
        "–" if value is None else f"{value:.{digits}g}" if value < 0.01 else f"{value:.{digits}f}"
    )


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", nargs="+", default=["small", "small-null"], choices=list(SETTINGS)
    )
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| setting | seed | L0 / k | FVE | recall A / B | precision A / B | class | planted | "
        "planted ratio | ratio (95% CI) | p_less | p_greater | p two-sided | recovered | "
        "raw ratio | raw recovered |"
    )
    print("|" + "---|" * 16)
    start = time.perf_counter()
    for name in args.settings:
        for seed in range(args.seeds):
            r = run_calibration(SETTINGS[name], seed)
            for o in r.orderings:
                t = o.test
                ci = t.get("ratio_ci") or [None, None]
                print(
                    f"| {name} | {seed} | {r.data_l0:.2f} / {r.k:g} | {r.fve:.3f} | "
                    f"{r.recall['A_only']:.2f} / {r.recall['B_only']:.2f} | "
                    f"{r.precision['A_only']:.2f} / {r.precision['B_only']:.2f} | {o.label} | "
                    f"{o.expected} ({o.planted_scale:g}×) | {o.planted_ratio:.2f} | "
                    f"{fmt(o.ratio)} ({fmt(ci[0])}–{fmt(ci[1])}) | {fmt(t['p_less'])} | "
                    f"{fmt(t['p_greater'])} | {fmt(t['p_value'])} | {yes(o.recovered)} | "
                    f"{fmt(o.raw_test.get('ratio'))} | {yes(o.raw_recovered)} |",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
