"""MoE Lens on an external MoE: routing specialisation and single-expert early decoding.

    python examples/moe_lens.py                      # a tiny random DeepSeek-V3, built offline
    python examples/moe_lens.py PATH_OR_HUB_NAME     # any MoE the Hugging Face adapter reads
    python examples/moe_lens.py deepseek-ai/deepseek-moe-16b-base --trust-remote-code
    python examples/moe_lens.py RUN/models/moe --corpus RUN/corpus   # held-out corpus tokens

Without a model, a tiny DeepSeek-V3 is built from a config, saved with ``save_pretrained`` to
``OUT/tiny-deepseek-v3`` and loaded back BY PATH through ``crossdiff.adapters.load_adapter``: the
same call that loads a downloaded checkpoint directory or a hub name. Models shipped as remote
code (deepseek-moe-16b) are loaded with ``trust_remote_code=True`` and then ``adapt``-ed; from
there on the analysis code is the same. Token batches come from the model's tokenizer on a few
built-in texts per domain, or (a model saved without a tokenizer) from random ids, a different
id range per pseudo-domain; with ``--corpus`` the held-out split of a crossdiff corpus (the
analyses' defaults: 64 sequences per domain for routing, 32 for early decoding).
Writes ``OUT/moe_lens.json`` and prints the headline tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from crossdiff.adapters import ModelAdapter, adapt, load_adapter
from crossdiff.plugins import create_plugin_manager
from crossdiff_analyses.early_decoding import EarlyDecodingSettings, model_early_decoding
from crossdiff_analyses.routing import RoutingSettings, model_routing

TEXTS = {
    "code": [
        "def mean(values):\n    total = sum(values)\n    return total / len(values)\n",
        "for index, item in enumerate(items):\n    if item is None:\n        continue\n",
    ],
    "prose": [
        "It was a bright cold day in April, and the clocks were striking thirteen.",
        "The river ran slow and brown under the bridge, and the town slept beside it.",
    ],
}


def build_tiny_deepseek_v3(path: Path) -> Path:
    """A tiny random DeepSeek-V3 (8 routed experts, top 3, one shared) saved to ``path``."""
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    config = DeepseekV3Config(
        vocab_size=128, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1,
        first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=32,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, routed_scaling_factor=1.5,
        max_position_embeddings=64, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # decisive routing, as in a trained model: router weights at unit scale
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 1.0)
    model.save_pretrained(path)
    return path


def load(name_or_path: str, trust_remote_code: bool) -> ModelAdapter:
    """The model's adapter: ``load_adapter`` by path or hub name, or remote code then ``adapt``."""
    manager = create_plugin_manager()
    if not trust_remote_code:
        return load_adapter(name_or_path, manager)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=True)
    return adapt(model.eval(), manager, tokenizer)


def token_batches(adapter: ModelAdapter, positions: int = 24) -> dict[str, list[torch.Tensor]]:
    """Domain -> ``[B, P]`` token batches: tokenised texts, or random ids without a tokenizer."""
    if adapter.tokenizer is not None:
        out = {}
        for domain, texts in TEXTS.items():
            ids = [adapter.tokenizer(text)["input_ids"] for text in texts]
            width = min(len(i) for i in ids)
            out[domain] = [torch.tensor([i[:width] for i in ids])]
        return out
    generator = torch.Generator().manual_seed(0)
    half = adapter.vocab_size // 2
    return {
        "low_ids": [torch.randint(3, half, (4, positions), generator=generator)],
        "high_ids": [torch.randint(half, adapter.vocab_size, (4, positions), generator=generator)],
    }


def corpus_batches(corpus: str, max_sequences: int) -> dict[str, list[torch.Tensor]]:
    """Domain -> token batches from the corpus's held-out split, as the analyses take them."""
    from crossdiff.corpus import load_sequences
    from crossdiff_analyses._moe import batches_by_domain

    packed = load_sequences(corpus)["validation"]
    return batches_by_domain(packed.input_ids, packed.domains, max_sequences, 2048)


def main(argv: list[str] | None = None) -> int:
    """Run routing and early decoding on one MoE; print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="model directory or hub name (default: tiny)")
    parser.add_argument("--out", default="moe_lens_out", help="output directory")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--corpus", help="a crossdiff corpus directory: use its held-out split")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(build_tiny_deepseek_v3(out / "tiny-deepseek-v3"))
    adapter = load(model, args.trust_remote_code)
    settings = EarlyDecodingSettings()
    if args.corpus:
        routing_batches = corpus_batches(args.corpus, RoutingSettings().max_sequences)
        early_batches = corpus_batches(args.corpus, settings.max_sequences)
    else:
        routing_batches = early_batches = token_batches(adapter)
    routing = model_routing(model, adapter, routing_batches)
    early = model_early_decoding(model, adapter, early_batches, settings)
    (out / "moe_lens.json").write_text(
        json.dumps({"model": model, "routing": routing, "early_decoding": early}, indent=1)
    )
    print(f"model {model}: MoE layers {adapter.moe_layers()}")
    print("layer  domain     top expert share (uniform)  experts for half  entropy")
    for layer, stats in routing["layers"].items():
        for domain, d in stats["domains"].items():
            print(
                f"{layer:>5}  {domain:<9}  {d['top_share']:.3f} ({stats['uniform_share']:.3f})"
                f"{d['experts_for_half']:>24}  {d['entropy']:.3f}"
            )
    print("layer  n  cos(contribution)  cos(hidden)  lens top-1  final KL")
    for layer, stats in early["layers"].items():
        for n, m in stats["as_routed"].items():
            print(
                f"{layer:>5}  {n}  {m['contribution_cosine']:17.4f}  {m['hidden_cosine']:11.4f}"
                f"  {m['lens_top1_agreement']:10.3f}  {m['final_kl']:.4f}"
            )
    print("domain     perplexity by n (every MoE layer keeps its top-n)")
    for domain, values in early["perplexity"]["as_routed"].items():
        print(f"{domain:<9}  " + "  ".join(f"n={n}: {v:.2f}" for n, v in values.items()))
    print(f"wrote {out / 'moe_lens.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
