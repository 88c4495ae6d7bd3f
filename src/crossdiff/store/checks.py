"""Input checks of a harvest: every model reads the same token ids, every activation is finite."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from crossdiff.errors import ConfigError, StageError


class NonFiniteActivationError(StageError):
    """A model produced NaN or infinite activations; the shards written before are kept."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary (token string -> id), what ids mean to it."""
    try:
        vocab = tokenizer.get_vocab()
    except AttributeError as error:
        raise ConfigError(
            f"cannot compare tokenizers: a {type(tokenizer).__name__} has no get_vocab()"
        ) from error
    text = json.dumps(sorted(vocab.items()), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_tokenizers(
    reference: Any,
    tokenizers: Mapping[str, Any],
    alignments: Mapping[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Each model's tokenizer fingerprint; raise unless it equals the corpus tokenizer's.

    A model whose tokenizer differs is accepted only with an alignment: an int array
    ``[corpus_vocab]`` mapping each corpus token id to that model's id for the same token.
    """
    alignments = alignments or {}
    expected = tokenizer_fingerprint(reference)
    fingerprints, mismatched = {}, []
    for name, tokenizer in tokenizers.items():
        fingerprints[name] = tokenizer_fingerprint(tokenizer)
        if fingerprints[name] != expected and name not in alignments:
            mismatched.append(name)
    if mismatched:
        raise ConfigError(
            f"model(s) {', '.join(map(repr, mismatched))} use a tokenizer different from the "
            "corpus tokenizer, so the same token ids would mean different text to each model. "
            "Use models that share the corpus tokenizer (rebuild the corpus with --tokenizer), "
            "or give an alignment (corpus id -> model id) for each of them"
        )
    return fingerprints


def check_alignment(name: str, alignment: np.ndarray, corpus_vocab: int) -> np.ndarray:
    """Validate ``alignment`` for model ``name``: int ids, one per corpus token id."""
    alignment = np.asarray(alignment)
    if alignment.ndim != 1 or alignment.shape[0] < corpus_vocab:
        raise ConfigError(
            f"alignment of model {name!r} must be a 1-d array of at least {corpus_vocab} ids "
            f"(one per corpus token id), got shape {alignment.shape}"
        )
    if not np.issubdtype(alignment.dtype, np.integer) or (alignment < 0).any():
        raise ConfigError(f"alignment of model {name!r} must hold non-negative integer ids")
    return alignment


def check_finite(activations: torch.Tensor, model: str, site: str, sequences: np.ndarray) -> None:
    """Raise :class:`NonFiniteActivationError` if ``activations [B, P, D]`` has NaN or inf.

    ``sequences [B]`` are the corpus indices of the batch's rows, named in the message.
    """
    # One float64 reduction: NaN and inf propagate, and fp32/16 values cannot overflow it.
    if bool(torch.isfinite(activations.sum(dtype=torch.float64))):
        return
    finite = torch.isfinite(activations)
    bad = (~finite).any(dim=-1).nonzero()  # [n_bad, 2] (row, position)
    row, position = (int(v) for v in bad[0])
    kinds = []
    if bool(torch.isnan(activations).any()):
        kinds.append("NaN")
    if bool(torch.isinf(activations).any()):
        kinds.append("inf")
    raise NonFiniteActivationError(
        f"model {model!r} produced {' and '.join(kinds)} activations at site {site!r} for "
        f"{len(bad)} token(s), first at corpus sequence {int(sequences[row])} position "
        f"{position}. Nothing was written for this batch and the shards already written are "
        "kept; check the model's weights and dtype, then rerun the same command to resume"
    )
