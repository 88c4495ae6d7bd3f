"""Models must read token ids the same way, unless a token alignment is given."""

from __future__ import annotations

import pytest

from crossdiff.adapters import adapt, check_same_tokenizer, vocabulary
from crossdiff.errors import ConfigError
from crossdiff.plugins import create_plugin_manager
from tests.adapters.conftest import get_case
from tests.adapters.tiny_models import VOCAB, tl_model, word_tokenizer

WORDS = ["<unk>", *(f"w{i}" for i in range(VOCAB - 1))]


def _adapter(tokenizer=None, model=None):
    return adapt(model or get_case("tl_dense").model, create_plugin_manager(), tokenizer)


def test_the_adapter_exposes_its_tokenizer_and_vocabulary() -> None:
    tokenizer = word_tokenizer(WORDS)
    adapter = _adapter(tokenizer)
    assert adapter.tokenizer is tokenizer
    assert vocabulary(adapter) == {w: i for i, w in enumerate(WORDS)}
    assert adapter.vocab_size == VOCAB
    assert vocabulary(_adapter()) is None


def test_same_tokenizer_passes() -> None:
    check_same_tokenizer(
        {"a": _adapter(word_tokenizer(WORDS)), "b": _adapter(word_tokenizer(WORDS))}
    )


def test_different_tokenizers_are_refused_unless_aligned() -> None:
    other = [*WORDS[:-1], "zzz"]
    models = {"dense": _adapter(word_tokenizer(WORDS)), "moe": _adapter(word_tokenizer(other))}
    with pytest.raises(ConfigError) as error:
        check_same_tokenizer(models)
    message = str(error.value)
    assert "'dense' and 'moe' have different tokenizers" in message
    assert "zzz" in message and "token alignment" in message
    check_same_tokenizer(models, alignment={"moe": list(range(VOCAB))})


def test_without_tokenizers_the_embedding_sizes_must_match() -> None:
    small = tl_model(moe=False)
    small.cfg.d_vocab = VOCAB - 1  # only the size the adapter reports matters here
    with pytest.raises(ConfigError, match=f"different vocabulary sizes \\({VOCAB} vs {VOCAB - 1}"):
        check_same_tokenizer({"a": _adapter(), "b": _adapter(model=small)})
    check_same_tokenizer({"a": _adapter(), "b": _adapter(model=get_case("tl_moe").model)})
