"""Pack tokenised documents into fixed-length sequences, each from one domain."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from crossdiff.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MIN_CONTEXT_LENGTH = 2


def check_context_length(context_length: int) -> None:
    """Raise :class:`ConfigError` unless ``context_length`` is an int of at least 2."""
    if not isinstance(context_length, int) or context_length < MIN_CONTEXT_LENGTH:
        raise ConfigError(
            f"context_length {context_length!r} is invalid: expected an integer >= "
            f"{MIN_CONTEXT_LENGTH} (a sequence needs an input and a next token)"
        )


def token_stream(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, batch_size: int = 256
) -> Iterator[np.ndarray]:
    """Yield each text's token ids followed by the end-of-text token, in order."""
    eos = tokenizer.eos_token_id
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from _encode(batch, tokenizer, eos)
            batch = []
    if batch:
        yield from _encode(batch, tokenizer, eos)


def _encode(batch: list[str], tokenizer: PreTrainedTokenizerBase, eos: int) -> Iterator[np.ndarray]:
    for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
        yield np.asarray([*ids, eos], dtype=np.int32)


def pack(
    documents: Iterable[np.ndarray], context_length: int, max_tokens: int | None = None
) -> np.ndarray:
    """Concatenate token arrays and cut them into rows of ``context_length`` tokens.

    Returns an int32 array ``[n_sequences, context_length]``; the tail shorter than one row is
    dropped, and so is everything past ``max_tokens`` (rounded down to whole rows).
    """
    check_context_length(context_length)
    limit = None if max_tokens is None else (max_tokens // context_length) * context_length
    parts, total = [], 0
    for ids in documents:
        parts.append(ids)
        total += len(ids)
        if limit is not None and total >= limit:
            break
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    n_rows = len(flat) // context_length
    if limit is not None:
        n_rows = min(n_rows, limit // context_length)
    return flat[: n_rows * context_length].reshape(n_rows, context_length)
