"""Fixtures: a tiny on-disk corpus (3 domains, vocab 300, context 16) and synthetic sequences."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from crossdiff.corpus import CorpusConfig, PackedSequences, build_corpus

WORDS = {
    "code": [
        "def",
        "return",
        "import",
        "class",
        "self",
        "if",
        "else",
        "for",
        "in",
        "while",
        "lambda",
        "yield",
        "none",
        "true",
    ],
    "science": [
        "energy",
        "matrix",
        "theorem",
        "vector",
        "integral",
        "proof",
        "sample",
        "variance",
        "field",
        "wave",
    ],
    "stories": [
        "she",
        "said",
        "the",
        "house",
        "was",
        "quiet",
        "and",
        "he",
        "walked",
        "slowly",
        "home",
        "tonight",
    ],
}


def _write_domain(root: Path, domain: str, n_docs: int, seed: int) -> str:
    rng = random.Random(seed)
    folder = root / domain
    folder.mkdir(parents=True)
    for i in range(n_docs):
        words = [rng.choice(WORDS[domain]) for _ in range(rng.randint(120, 200))]
        (folder / f"doc{i}.txt").write_text(" ".join(words) + "\n", encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built corpus directory: three domains of word salad, vocab 300, context 16."""
    root = tmp_path_factory.mktemp("texts")
    sources = {d: _write_domain(root, d, 40, i) for i, d in enumerate(WORDS)}
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    config = CorpusConfig(
        domains=tuple(WORDS),
        sources=sources,
        vocab_size=300,
        context_length=16,
        val_fraction=0.1,
        tokenizer_chars_per_domain=100_000,
    )
    build_corpus(config, out)
    return out


def synthetic_sequences(
    vocab: int = 64, ctx: int = 16, n_train: int = 96, n_val: int = 12, seed: int = 0
) -> dict[str, PackedSequences]:
    """Learnable token rows: each domain counts up by its own stride (mod vocab)."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        domains = np.array(["a", "b"] * (n // 2))
        starts = rng.integers(0, vocab, size=n)
        stride = np.where(domains == "a", 1, 3)
        ids = (starts[:, None] + stride[:, None] * np.arange(ctx)[None, :]) % vocab
        return ids.astype(np.int32), domains

    return {"train": PackedSequences(*rows(n_train)), "validation": PackedSequences(*rows(n_val))}
