"""``corpus_stats``: tokens, sequences and unigram entropy of each domain of the corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.corpus import load_sequences, load_tokenizer
from crossdiff.corpus.stats import unigram_entropy
from crossdiff.figures import new_figure, save_figure


class CorpusStats:
    """Per domain and split: packed tokens, and the unigram entropy (nats) of the tokens."""

    def run(self, context: RunContext) -> AnalysisResult:
        """Count tokens and compute unigram entropy per domain from the packed sequences."""
        corpus_dir = context.stage_dir("corpus")
        vocab_size = len(load_tokenizer(corpus_dir / "tokenizer"))
        sequences = load_sequences(corpus_dir)
        summary: dict[str, dict[str, dict[str, float]]] = {}
        for split, packed in sequences.items():
            for domain in np.unique(packed.domains):
                tokens = packed.of_domain(domain)
                summary.setdefault(str(domain), {})[split] = {
                    "tokens": int(tokens.size),
                    "unigram_entropy": unigram_entropy(tokens, vocab_size),
                }
        return AnalysisResult(summary, {"tokens_per_domain": _bar_chart(summary)})


def _bar_chart(summary: dict[str, dict[str, dict[str, float]]]):
    def draw(path: Path) -> None:
        domains = sorted(summary)
        fig = new_figure()
        ax = fig.subplots()
        ax.bar(domains, [summary[d].get("train", {}).get("tokens", 0) for d in domains])
        ax.set_ylabel("training tokens")
        ax.set_title("Packed training tokens per domain")
        save_figure(fig, path)

    return draw
