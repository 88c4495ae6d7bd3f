"""Sweep the crosscoder's sparsity coefficient λ on a finished run's activations.

    python examples/lambda_sweep.py RUN_DIR [CONFIG] [--lambdas 0,0.1,0.3,0.5,1.0] [--steps N]

For each λ, retrains the run's crosscoder (the config's ``[crosscoder]`` settings with only
``sparsity_coeff`` changed) into ``RUN_DIR/sweeps/lambda/<λ>`` (finished ones are skipped), then
classifies its live latents by relative decoder norm in the normalised space and measures their
firing density on the held-out store. Prints a markdown table (the one in docs/results.md) and
writes ``RUN_DIR/sweeps/lambda/sweep.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.stage import WEIGHTS_DIR, train_crosscoder_stage
from crossdiff.latents import scan_latents
from crossdiff.pipeline import load_run_config
from crossdiff.stages import atomic_write_json
from crossdiff.store import open_store

HERE = Path(__file__).resolve().parent


def sweep_point(run_dir: Path, config: Any, lam: float, steps: int | None) -> dict[str, Any]:
    """Train (or reuse) the crosscoder at ``lam`` and measure its classes and densities."""
    from crossdiff.density import CALIBRATED, density_summary, measure_density
    from crossdiff.latents import iter_store_batches

    settings = dataclasses.replace(
        config.crosscoder,
        sparsity_coeff=lam,
        steps=steps or config.crosscoder.steps,
        ce_sequences=0,
        progress=False,
    )
    out = run_dir / "sweeps" / "lambda" / f"{lam:g}"
    metrics = train_crosscoder_stage(
        run_dir / "activations" / "train", out, settings,
        heldout_store=run_dir / "activations" / "validation", models=tuple(config.models),
    )  # fmt: skip
    crosscoder = Crosscoder.from_pretrained(out / WEIGHTS_DIR)
    store = open_store(run_dir / "activations" / "validation")
    scan = scan_latents(crosscoder, store, top_n=1)
    classes = latent_classes(crosscoder)
    alive = (scan.fires_L > 0).tolist()
    labels = ["shared", *(f"{m}_only" for m in crosscoder.cfg.models)]
    measurement = measure_density(
        crosscoder,
        lambda: iter_store_batches(crosscoder, store),
        store.domains,
        CALIBRATED,
        classes,
    )
    density = density_summary(measurement, present=labels)
    return {
        "lambda": lam,
        "fve": metrics["fve"],
        "dead_fraction": metrics["dead_fraction"],
        "counts": {
            c: sum(a and k == c for k, a in zip(classes, alive, strict=True)) for c in labels
        },
        "median_density": density["median"],
        "tests": density["tests"],
    }


def table(points: list[dict[str, Any]], models: list[str]) -> str:
    """The sweep as a markdown table."""

    def num(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    head = (
        f"| λ | FVE {' / '.join(models)} | dead | "
        + " | ".join(f"{m}-only" for m in models)
        + f" | median density shared / {' / '.join(f'{m}-only' for m in models)} |"
    )
    rows = [head, "|" + "---|" * (4 + len(models))]
    for p in points:
        fve = " / ".join(num(p["fve"][m], 3) for m in models)
        counts = " | ".join(str(p["counts"][f"{m}_only"]) for m in models)
        dens = " / ".join(
            num(p["median_density"][c], 4) for c in ["shared", *(f"{m}_only" for m in models)]
        )
        rows.append(f"| {p['lambda']:g} | {fve} | {p['dead_fraction']:.1%} | {counts} | {dens} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Run the sweep and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished `crossdiff run` directory")
    parser.add_argument("config", type=Path, nargs="?", default=HERE / "quickstart.toml")
    parser.add_argument("--lambdas", default="0,0.1,0.3,0.5,1.0", help="comma-separated λ")
    parser.add_argument("--steps", type=int, help="override the config's crosscoder steps")
    args = parser.parse_args(argv)
    config = load_run_config(args.config)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    points = [sweep_point(args.run_dir, config, lam, args.steps) for lam in lambdas]
    atomic_write_json(args.run_dir / "sweeps" / "lambda" / "sweep.json", points)
    print(table(points, list(config.models)))
    print(json.dumps({"sweep": str(args.run_dir / "sweeps" / "lambda" / "sweep.json")}))


if __name__ == "__main__":
    main()
