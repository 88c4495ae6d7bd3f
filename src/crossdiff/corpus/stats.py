"""Corpus statistics: per-domain token counts and the unigram entropy baseline."""

from __future__ import annotations

import numpy as np


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the empirical unigram distribution of ``tokens``.

    This is the cross-entropy a model that ignores context reaches at best on the same tokens,
    the baseline a language model's loss is compared against.
    """
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size == 0:
        raise ValueError("unigram_entropy needs at least one token, got an empty array")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(
            f"token ids span [{tokens.min()}, {tokens.max()}], outside vocab_size {vocab_size}"
        )
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / tokens.size
    return float(-(p * np.log(p)).sum())
