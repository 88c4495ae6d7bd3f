"""Corpus sources: local files, Hugging Face datasets from local paths, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.corpus import CorpusConfig, build_corpus, load_documents
from crossdiff.corpus.sources import parse_source_spec
from crossdiff.corpus.tokenizer import train_bpe_tokenizer
from crossdiff.errors import ConfigError

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def make_texts(n: int, seed: int) -> list[str]:
    """``n`` distinct deterministic pseudo-sentences."""
    return [
        " ".join(WORDS[(seed + i * 7 + j * 3) % len(WORDS)] for j in range(30 + i)) + f" #{i}"
        for i in range(n)
    ]


def test_local_files_and_jsonl(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(make_texts(3, 0)):
        (folder / f"doc{i}.txt").write_text(text)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in make_texts(2, 5)))
    source = parse_source_spec("poems", f"{folder},{jsonl}")
    documents = list(source.documents())
    assert len(documents) == 5
    assert documents[0].text == make_texts(3, 0)[0]
    assert documents[-1].text == make_texts(2, 5)[1]


def test_hugging_face_dataset_from_a_local_directory(tmp_path: Path) -> None:
    """The hub path (`load_dataset(name)`) exercised on a local data directory."""
    data = tmp_path / "hfdata"
    data.mkdir()
    texts = make_texts(12, 1)
    (data / "train.jsonl").write_text("\n".join(json.dumps({"story": t}) for t in texts))
    config = CorpusConfig(
        domains=("tales",),
        sources={"tales": f"hf:{data}:train:story"},
        vocab_size=300,
        context_length=8,
    )
    build_corpus(config, tmp_path / "corpus")
    documents = load_documents(tmp_path / "corpus")
    kept = sorted([*documents["train"]["text"], *documents["validation"]["text"]])
    assert kept == sorted(texts)


def test_unknown_domain_is_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown domain 'storys' \(did you mean 'stories'\?\)"):
        build_corpus(CorpusConfig(domains=("storys",)), tmp_path / "c")


def test_missing_and_empty_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        parse_source_spec("code", str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no text files"):
        parse_source_spec("code", str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n")
    config = CorpusConfig(domains=("code",), sources={"code": str(blank)})
    with pytest.raises(ConfigError, match="domain 'code': the source yielded no documents"):
        build_corpus(config, tmp_path / "c")
    with pytest.raises(ConfigError, match="hf:NAME"):
        parse_source_spec("code", "hf:")


@pytest.mark.parametrize("length", [1, 0, -3])
def test_context_length_below_two_is_rejected(length: int) -> None:
    with pytest.raises(ConfigError, match=f"context_length {length} is invalid"):
        CorpusConfig(context_length=length)


def test_vocabulary_larger_than_the_corpus_supports() -> None:
    with pytest.raises(ConfigError, match="vocab_size 5000 is larger than the corpus supports"):
        train_bpe_tokenizer(["tiny text, tiny text."] * 3, 5000)
    with pytest.raises(ConfigError, match="vocab_size 100 is too small"):
        train_bpe_tokenizer(["x"], 100)


def test_other_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"val_fraction 1\.5"):
        CorpusConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="not in domains"):
        CorpusConfig(domains=("code",), sources={"poems": "x"})
