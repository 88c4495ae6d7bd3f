"""Expected GPU hours of ``examples/paper.toml``, stage by stage, from its own settings.

The work of each stage is read off the recipe (tokens to train each model on, tokens to harvest,
activations the crosscoder trains on) and the models the presets build (parameter counts on the
meta device). Hours = work / throughput, where each throughput is either measured (pass the
figures the GPU check script prints: ``--train-tok-s``, ``--harvest-tok-s``, ``--crosscoder-act-s``)
or, where none is given, derived from a FLOP count per token at a given sustained FLOP rate
(``--tflops``, default 250: a quarter of an H100's dense bf16 peak, an assumption, not a
measurement):

- model training: 3 × (2·N + 2·L·n_ctx·d) FLOPs a token (forward and backward; N the active
  parameters that multiply, i.e. all active ones but the embedding lookups; the attention term
  as in Kaplan et al. 2020);
- harvest: one forward, 2·N + 2·L·n_ctx·d a token, for each model;
- crosscoder: 6·D·M (dense encoder, forward and backward) + 6·k·D (sparse decoder) an
  activation, D the summed widths, M the latents.

    .venv/bin/python benchmarks/paper_gpu_hours.py [--vocab 50257] [--tflops 250]
        [--train-tok-s X] [--harvest-tok-s X] [--crosscoder-act-s X] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "paper.toml"


def model_flops(config) -> tuple[float, int]:
    """Forward FLOPs per token of a model config, and its active parameters."""
    import torch

    from crossdiff.models.build import build_model
    from crossdiff.models.params import count_parameters

    with torch.device("meta"):
        counts = count_parameters(build_model(config, device="meta"))
    multiplying = counts.active_non_embedding + config.d_model * config.vocab_size  # + unembed
    attention = 2 * config.n_layers * config.n_ctx * config.d_model
    return 2 * multiplying + attention, counts.active


def main() -> None:
    from crossdiff.models.config import preset
    from crossdiff.pipeline import load_run_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50257, help="tokenizer size (gpt2: 50257)")
    parser.add_argument("--tflops", type=float, default=250.0, help="sustained TFLOP/s per GPU")
    parser.add_argument("--train-tok-s", type=float, help="measured model training tokens/s")
    parser.add_argument("--harvest-tok-s", type=float, help="measured harvest tokens/s (pair)")
    parser.add_argument("--crosscoder-act-s", type=float, help="measured crosscoder acts/s")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    run = load_run_config(RECIPE, args.overrides)
    rate = args.tflops * 1e12
    n_ctx = run.corpus.context_length
    rows = []
    harvest_flops, widths = 0.0, []
    for name, spec in run.models.items():
        model, train = preset(spec.preset, spec.arch, args.vocab, n_ctx, spec.model, spec.train)
        forward, active = model_flops(model)
        seconds = (
            train.tokens / args.train_tok_s
            if args.train_tok_s
            else 3 * forward * train.tokens / rate
        )
        rows.append(
            (f"train {name} ({active / 1e6:.0f}M active)", f"{train.tokens:,} tok", seconds)
        )
        harvest_flops += forward
        widths.append(model.d_model)
    h = run.harvest
    sequences = (h.train_sequences or 0) + (h.validation_sequences or 0)
    tokens = sequences * (n_ctx - 1)
    seconds = tokens / args.harvest_tok_s if args.harvest_tok_s else harvest_flops * tokens / rate
    rows.append(("harvest (both models)", f"{tokens:,} tok", seconds))
    c = run.crosscoder
    d_total = sum(widths)
    latents = c.dict_size or c.expansion * max(widths)
    activations = c.steps * c.batch_size
    per_act = 6 * d_total * latents + 6 * c.k * d_total
    seconds = (
        activations / args.crosscoder_act_s
        if args.crosscoder_act_s
        else per_act * activations / rate
    )
    rows.append((f"crosscoder ({latents:,} latents)", f"{activations:,} act", seconds))
    print(f"{'stage':<34} {'work':>18} {'GPU hours':>10}")
    for stage, work, secs in rows:
        print(f"{stage:<34} {work:>18} {secs / 3600:>10.2f}")
    print(f"{'total':<34} {'':>18} {sum(r[2] for r in rows) / 3600:>10.2f}")
    measured = [x for x in (args.train_tok_s, args.harvest_tok_s, args.crosscoder_act_s) if x]
    basis = "measured throughputs" if len(measured) == 3 else f"{args.tflops:g} TFLOP/s sustained"
    print(f"basis: {basis}")


if __name__ == "__main__":
    main()
