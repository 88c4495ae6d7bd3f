"""Shared fixtures: a small real corpus built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossdiff.corpus import CorpusConfig, build_corpus

SMALL_CORPUS = CorpusConfig(
    max_documents_per_domain=40,
    vocab_size=512,
    tokenizer_chars_per_domain=200_000,
    context_length=32,
    val_fraction=0.1,
)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default three domains, 40 documents each, vocab 512, context 32 (built once)."""
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus(SMALL_CORPUS, out)
    return out
