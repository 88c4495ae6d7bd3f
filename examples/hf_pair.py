"""Diff two Hugging Face models loaded by path: a tiny Qwen2 (dense) and a tiny Qwen2-MoE.

    python examples/hf_pair.py runs/hf_pair            # build both, run crossdiff, print
    python examples/hf_pair.py runs/hf_pair --steps 50 --documents 8     # smaller and faster

Both models are built from configs by ``transformers`` (no hub), with random weights, and saved
with ``save_pretrained`` next to the tokenizer they read: the corpus' own BPE tokenizer, built
first into ``OUT/run/corpus`` (the run then finds that corpus finished with the same settings).
The run config names them as ``[models.NAME] path = ...``, exactly as a downloaded checkpoint
directory would be named, and ``crossdiff run`` does the rest: describe each model (architecture,
total and active parameters, held-out loss per domain), harvest, train the crosscoder, analyse,
report. Writes ``OUT/hf_pair.toml``, ``OUT/run/report/{summary.json,report.html}`` and prints the
report's "What was compared" numbers. Random models make weak features (the point here is the
plumbing); replace the two paths with real checkpoints for a real comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CORPUS = {"vocab_size": 512, "context_length": 32, "tokenizer_chars_per_domain": 200_000}
"""The corpus of the example (embedded data; a 512-token BPE, sequences of 32 tokens)."""
WIDTH = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
"""What both models share, so that their residual streams have the same width."""


def save_models(out: Path, tokenizer_dir: Path, seed: int = 0) -> dict[str, Path]:
    """A tiny Qwen2 and Qwen2-MoE (4 experts, 2 per token) saved with ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2MoeConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = {
        **WIDTH,
        "vocab_size": len(tokenizer),
        "num_key_value_heads": 2,
        "max_position_embeddings": CORPUS["context_length"],
        "tie_word_embeddings": False,
    }
    configs = {
        "dense": Qwen2Config(**common, intermediate_size=128),
        "moe": Qwen2MoeConfig(
            **common, intermediate_size=128, moe_intermediate_size=64, num_experts=4,
            num_experts_per_tok=2, shared_expert_intermediate_size=64, decoder_sparse_step=1,
            norm_topk_prob=True, mlp_only_layers=[],
        ),
    }  # fmt: skip
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        paths[name] = out / "models" / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def run_config(paths: dict[str, Path], steps: int, documents: int) -> str:
    """The run config (TOML) naming both models by path."""
    corpus = "\n".join(f"{k} = {v}" for k, v in CORPUS.items())
    return f'''name = "Qwen2 vs Qwen2-MoE, loaded by path"
analyses = ["corpus_stats", "feature_classes", "density", "dashboards", "routing"]

[corpus]
max_documents_per_domain = {documents}
{corpus}

[models.dense]
path = "{paths["dense"]}"

[models.moe]
path = "{paths["moe"]}"

[harvest]
site = "1.mlp_out"
train_sequences = 256
validation_sequences = 64
batch_sequences = 16
shard_sequences = 64

[crosscoder]
expansion = 4
steps = {steps}
batch_size = 256
dead_tokens = 20_000
ce_sequences = 8
progress = false
'''


def compared(summary: dict[str, Any]) -> list[str]:
    """The report's "What was compared" numbers as lines of text."""
    lines = []
    for name, model in summary["models"].items():
        losses = ", ".join(f"{d} {v:.3f}" for d, v in model["val_loss"].items())
        lines.append(
            f"{name}: {model['architecture']} ({model['arch']}), "
            f"{model['active_params']:,} active of {model['total_params']:,} parameters; "
            f"held-out loss {losses}"
        )
    quality = summary.get("crosscoder", {})
    lines.append(f"crosscoder FVE {quality.get('fve')}, CE recovered {quality.get('ce_recovered')}")
    lines += [f"claim: {c['claim']} -> {c['statistic']}" for c in summary.get("claims", [])]
    return lines


def main(out: Path, steps: int = 300, documents: int = 40) -> dict[str, Any]:
    """Build the corpus and the two models under ``out``, run crossdiff; return summary.json."""
    from crossdiff.cli import main as crossdiff
    from crossdiff.corpus import CorpusConfig, build_corpus

    out = out.resolve()
    corpus = CorpusConfig(max_documents_per_domain=documents, **CORPUS)
    build_corpus(corpus, out / "run" / "corpus")  # the run finds it finished
    paths = save_models(out, out / "run" / "corpus" / "tokenizer")
    config = out / "hf_pair.toml"
    config.write_text(run_config(paths, steps, documents))
    assert crossdiff(["run", str(config), "--out", str(out / "run"), "--no-progress"]) == 0
    return json.loads((out / "run" / "report" / "summary.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--steps", type=int, default=300, help="crosscoder steps (default 300)")
    parser.add_argument(
        "--documents", type=int, default=40, help="documents per domain (default 40)"
    )
    args = parser.parse_args()
    print("\n".join(compared(main(args.out, args.steps, args.documents))))
