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


def pack_rows(
    documents: Iterable[np.ndarray],
    context_length: int,
    max_tokens: int | None = None,
    block_rows: int = 1024,
) -> Iterator[np.ndarray]:
    """Concatenate token arrays and yield them cut into rows of ``context_length`` tokens, in
    blocks of up to ``block_rows`` rows (int32 ``[n, context_length]``), holding no more than a
    block (and the documents that straddle it) in memory.

    The tail shorter than one row is dropped, and so is everything past ``max_tokens`` (rounded
    down to whole rows); documents past it are not read.
    """
    check_context_length(context_length)
    left = None if max_tokens is None else max_tokens // context_length  # rows still wanted
    pending: list[np.ndarray] = []
    held = 0
    if left == 0:
        return
    for ids in documents:
        pending.append(ids)
        held += len(ids)
        wanted = block_rows if left is None else min(block_rows, left)
        if held // context_length >= wanted:
            flat = np.concatenate(pending)
            cut = (held // context_length) * context_length
            if left is not None:
                cut = min(cut, left * context_length)
            for start in range(0, cut, block_rows * context_length):
                stop = min(start + block_rows * context_length, cut)
                yield flat[start:stop].reshape(-1, context_length)
            if left is not None:
                left -= cut // context_length
                if left == 0:
                    return
            pending, held = [flat[cut:]], len(flat) - cut
    rows = held // context_length if left is None else min(held // context_length, left)
    if rows:
        yield np.concatenate(pending)[: rows * context_length].reshape(rows, context_length)


def pack(
    documents: Iterable[np.ndarray], context_length: int, max_tokens: int | None = None
) -> np.ndarray:
    """Concatenate token arrays and cut them into rows of ``context_length`` tokens.

    Returns an int32 array ``[n_sequences, context_length]``; the tail shorter than one row is
    dropped, and so is everything past ``max_tokens`` (rounded down to whole rows).
    """
    blocks = list(pack_rows(documents, context_length, max_tokens))
    if not blocks:
        return np.zeros((0, context_length), dtype=np.int32)
    return np.concatenate(blocks)
