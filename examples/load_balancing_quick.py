"""The load-balancing experiment without the rest of the pipeline, at a size a busy CPU allows.

Trains the in-repo MoE three times on an existing corpus stage (``crossdiff corpus build`` or a
run's ``corpus/``): with the preset's load-balancing coefficient, with 0, and with the preset's
coefficient on batches of 4 sequences (the same tokens); then runs ``routing_similarity`` on the
held-out split of each, and the cross-model matching between them, and writes ``summary.json``
and the figures to ``--out``. A finished model is not trained again, so a rerun only analyses.
``examples/load_balancing.toml`` is the full-size run.

    python examples/load_balancing_quick.py CORPUS_DIR --out runs/lb_quick --tokens 120000 \
        --model d_model=64 --model d_mlp=256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "lb_preset": {},
    "lb_zero": {"load_balance_coef": 0.0},
    "small_batch": {"batch_size": 4},
}


def main() -> None:
    """Train the variants, analyse each, write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens per model")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=INT",
                        help="override of the tiny preset's model settings")  # fmt: skip
    parser.add_argument("--sequences", type=int, default=24, help="held-out sequences per domain")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS),
                        help="train and analyse only these (repeat; default all)")  # fmt: skip
    args = parser.parse_args()

    from crossdiff.adapters import load_adapter
    from crossdiff.models.stage import train_model_stage
    from crossdiff.plugins import create_plugin_manager
    from crossdiff_analyses._moe import batches_by_domain
    from crossdiff_analyses.routing_similarity import SimilaritySettings, model_similarity

    model = {k: int(v) for k, v in (spec.split("=", 1) for spec in args.model)}
    common = {"tokens": args.tokens, "warmup_steps": 5, "eval_every": 0, "checkpoint_every": 0,
              "final_eval_sequences_per_domain": 16, "log_every": 10}  # fmt: skip
    from crossdiff.corpus import load_sequences

    held_out = load_sequences(args.corpus)["validation"]
    batches = batches_by_domain(held_out.input_ids, held_out.domains, args.sequences, 2048)
    settings = SimilaritySettings(max_sequences=args.sequences)
    manager = create_plugin_manager()
    summaries, routed, adapters, timing = {}, {}, {}, {}
    for name in args.variant or list(VARIANTS):
        train = VARIANTS[name]
        started = time.perf_counter()
        directory = args.out / "models" / name
        train_model_stage(args.corpus, directory, "moe", "tiny", model, {**common, **train})
        timing[name] = time.perf_counter() - started
        adapters[name] = load_adapter(str(directory), manager)
        summaries[name], routed[name] = model_similarity(name, adapters[name], batches, settings)
        print(f"{name}: trained in {timing[name]:.0f} s", flush=True)
        write(args, model, timing, summaries, routed, adapters)


def write(args, model, timing, summaries, routed, adapters) -> None:
    """``summary.json`` and the figures of the variants analysed so far."""
    from crossdiff_analyses.routing_similarity import _collapse, _cross, _curves, models_cross

    cross = models_cross(routed, adapters)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"tokens": args.tokens, "model": model, "train_seconds": timing,
               "models": summaries, "cross_model": cross}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, data in summaries.items():
        _curves(name, data)(args.out / f"similarity_overlap_{name}.png")
        _collapse(name, data)(args.out / f"collapse_{name}.png")
    if cross:
        _cross(cross)(args.out / "cross_model.png")


if __name__ == "__main__":
    main()
