"""Streamed corpus building: saved-dataset sources, hub-style options, hub tokenizers by spec,
packing in blocks, reading budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossdiff.corpus import CorpusConfig, build_corpus, load_documents, load_tokenizer
from crossdiff.corpus.build import split_documents
from crossdiff.corpus.packing import pack, pack_rows
from crossdiff.corpus.sources import Document, parse_source_spec
from crossdiff.errors import ConfigError
from tests.corpus.test_sources import make_texts


def saved_dataset(path: Path, column: str, texts: list[str], split: str = "train") -> Path:
    """A DatasetDict with one split, written by ``datasets``' ``save_to_disk``."""
    import datasets

    datasets.DatasetDict({split: datasets.Dataset.from_dict({column: texts})}).save_to_disk(
        str(path)
    )
    return path


def test_a_saved_dataset_dict_is_read_in_order(tmp_path: Path) -> None:
    texts = make_texts(30, 2)
    data = saved_dataset(tmp_path / "saved", "story", texts, split="train")
    source = parse_source_spec("tales", f"hf:{data}:train:story")
    assert [d.text for d in source.documents()] == texts
    with pytest.raises(ConfigError, match="no column 'text'; columns: story"):
        list(parse_source_spec("tales", f"hf:{data}").documents())
    with pytest.raises(ConfigError, match="no split 'test'; splits: train"):
        list(parse_source_spec("tales", f"hf:{data}:test:story").documents())


def test_hf_spec_options_are_checked(tmp_path: Path) -> None:
    source = parse_source_spec("code", "hf:some/name:train:content?data_dir=python&config=x")
    assert "data_dir python" in source.description and "config x" in source.description
    with pytest.raises(
        ConfigError, match=r"unknown option of source .* 'dir'; expected one of: config, data_dir"
    ):
        parse_source_spec("code", "hf:some/name?dir=python")
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_source_spec("code", "hf:some/name?data_dir")


@pytest.mark.parametrize("limit", [None, 0, 7, 64, 10_000])
@pytest.mark.parametrize("block_rows", [1, 3, 1024])
def test_packing_in_blocks_equals_packing_at_once(limit, block_rows) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, rng.integers(1, 30)).astype(np.int32) for _ in range(40)]
    flat = np.concatenate(docs)
    rows = len(flat) // 8 if limit is None else min(len(flat) // 8, limit // 8)
    expected = flat[: rows * 8].reshape(rows, 8)
    blocks = list(pack_rows(iter(docs), 8, limit, block_rows=block_rows))
    assert all(0 < len(b) <= block_rows for b in blocks)
    got = np.concatenate(blocks) if blocks else np.zeros((0, 8), np.int32)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(pack(iter(docs), 8, limit), expected)


def test_packing_stops_reading_at_the_token_limit() -> None:
    read = []

    def documents():
        for i in range(100):
            read.append(i)
            yield np.arange(10, dtype=np.int32)

    assert sum(len(b) for b in pack_rows(documents(), 5, 40)) == 8
    assert len(read) == 4  # 40 tokens are in the first four documents


def test_a_domain_that_draws_no_validation_document_still_holds_one_out() -> None:
    documents = [Document(f"d{i}", f"text {i}") for i in range(5)]
    config = CorpusConfig(val_fraction=1e-9)
    split = split_documents(documents, "x", config, set())
    assert len(split.validation) == 1 and len(split.train) == 4
    kept = [d.name for d in split.train]
    assert kept == sorted(kept, key=lambda n: int(n[1:]))  # the rest keep their order


def test_character_budget_stops_reading(tmp_path: Path) -> None:
    texts = make_texts(40, 3)
    data = saved_dataset(tmp_path / "saved", "text", texts)
    budget = sum(len(t) for t in texts[:10])
    config = CorpusConfig(
        domains=("tales",), sources={"tales": f"hf:{data}"}, vocab_size=300,
        context_length=8, max_characters_per_domain=budget,
    )  # fmt: skip
    stats = build_corpus(config, tmp_path / "corpus")["domains"]["tales"]
    assert sum(stats["documents"].values()) == 10
    documents = load_documents(tmp_path / "corpus")
    assert sorted([*documents["train"]["text"], *documents["validation"]["text"]]) == sorted(
        texts[:10]
    )


def local_bpe_tokenizer(path: Path, texts: list[str]) -> Path:
    """A tiny byte-level BPE built with ``tokenizers``, saved as a transformers tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    raw.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    wrapped.save_pretrained(str(path))
    return path


def test_hf_tokenizer_spec_loads_a_local_directory(tmp_path: Path) -> None:
    texts = make_texts(20, 4)
    directory = local_bpe_tokenizer(tmp_path / "tok", texts)
    data = saved_dataset(tmp_path / "saved", "text", texts)
    config = CorpusConfig(
        domains=("tales",), sources={"tales": f"hf:{data}"}, context_length=8,
        tokenizer=f"hf:{directory}",
    )  # fmt: skip
    build_corpus(config, tmp_path / "corpus")
    used = load_tokenizer(tmp_path / "corpus" / "tokenizer")
    assert used.get_vocab() == load_tokenizer(directory).get_vocab()
    assert len(used) == len(load_tokenizer(directory)) < 1000  # not the default 8192
    with pytest.raises(ConfigError, match="names no tokenizer"):
        load_tokenizer("hf:")
