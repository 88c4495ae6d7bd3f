"""Byte-level BPE tokenizers trained offline, saved and loaded as Hugging Face tokenizer dirs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from crossdiff.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

END_OF_TEXT = "<|endoftext|>"
BYTE_ALPHABET = 256
HF_PREFIX = "hf:"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer with ``vocab_size`` entries (``<|endoftext|>`` included).

    Raises :class:`ConfigError` if the text has too few distinct pairs to reach ``vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < BYTE_ALPHABET + 1:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least "
            f"{BYTE_ALPHABET + 1} (256 bytes and {END_OF_TEXT})"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    reached = tokenizer.get_vocab_size()
    if reached < vocab_size:
        raise ConfigError(
            f"vocab_size {vocab_size} is larger than the corpus supports: BPE training stopped at "
            f"{reached} tokens (no pair of tokens occurs twice more); use vocab_size <= {reached} "
            "or more text"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load any Hugging Face tokenizer by local directory (or hub name, where the hub is reachable);
    an ``hf:`` prefix (``hf:gpt2``, ``hf:/path/to/dir``) is allowed, as in corpus source specs.

    The tokenizer needs an end-of-text token, used to separate documents when packing.
    """
    from transformers import AutoTokenizer

    if isinstance(name_or_path, str) and name_or_path.startswith(HF_PREFIX):
        name_or_path = name_or_path[len(HF_PREFIX) :]
        if not name_or_path:
            raise ConfigError("tokenizer 'hf:' names no tokenizer; expected hf:NAME or hf:DIR")

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load tokenizer {str(name_or_path)!r}: {error}") from error
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"tokenizer {str(name_or_path)!r} has no eos_token; "
            "crossdiff separates documents with it"
        )
    return tokenizer
