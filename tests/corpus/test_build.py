"""The corpus stage: splits, de-duplication, determinism, packing, resumption."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from crossdiff.corpus import (
    CorpusConfig,
    build_corpus,
    load_documents,
    load_sequences,
    load_tokenizer,
)
from crossdiff.corpus.build import split_documents
from crossdiff.corpus.sources import Document
from crossdiff.stages import read_manifest
from tests.conftest import SMALL_CORPUS


def tree_hash(path: Path) -> str:
    """sha256 over every file's relative name and bytes, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def test_no_document_is_in_both_splits(small_corpus: Path) -> None:
    documents = load_documents(small_corpus)
    train = set(documents["train"]["text"])
    validation = set(documents["validation"]["text"])
    assert train and validation
    assert not train & validation
    names = set(documents["train"]["name"]) & set(documents["validation"]["name"])
    assert not names


def test_every_domain_has_both_splits_and_a_domain_column(small_corpus: Path) -> None:
    documents = load_documents(small_corpus)
    for split in ("train", "validation"):
        assert set(documents[split]["domain"]) == {"code", "science", "stories"}


def test_same_seed_builds_are_byte_identical(small_corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_corpus(SMALL_CORPUS, again)
    for part in ("documents", "tokenizer", "sequences"):
        assert tree_hash(small_corpus / part) == tree_hash(again / part), part


def test_another_seed_gives_another_split() -> None:
    documents = [Document(f"d{i}", f"text number {i}") for i in range(200)]
    first = split_documents(documents, "x", CorpusConfig(seed=0), set())
    second = split_documents(documents, "x", CorpusConfig(seed=1), set())
    assert {d.name for d in first.validation} != {d.name for d in second.validation}
    for split in (first, second):
        assert len(split.train) + len(split.validation) == 200


def test_exact_duplicates_are_removed_within_and_across_domains() -> None:
    seen: set[str] = set()
    a = [Document("a1", "same text"), Document("a2", "same text"), Document("a3", "other")]
    b = [Document("b1", "other"), Document("b2", "fresh")]
    first = split_documents(a, "a", CorpusConfig(), seen)
    second = split_documents(b, "b", CorpusConfig(), seen)
    assert first.duplicates_removed == 1
    assert second.duplicates_removed == 1
    kept = [d.name for s in (first, second) for d in s.train + s.validation]
    assert sorted(kept) == ["a1", "a3", "b2"]


def test_tokenizer_round_trips_every_domain(small_corpus: Path) -> None:
    tokenizer = load_tokenizer(small_corpus / "tokenizer")
    documents = load_documents(small_corpus)["validation"]
    for domain in ("code", "science", "stories"):
        texts = [
            t for t, d in zip(documents["text"], documents["domain"], strict=True) if d == domain
        ]
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
    odd = "naïve café — ∑ x² \t\n  trailing   spaces 😀 \r\n"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd


def test_sequences_are_the_domain_token_streams_cut_in_rows(small_corpus: Path) -> None:
    """Each domain's packed rows are exactly its documents' tokens (+ eos), in order."""
    tokenizer = load_tokenizer(small_corpus / "tokenizer")
    documents = load_documents(small_corpus)["train"]
    packed = load_sequences(small_corpus)["train"]
    context_length = packed.input_ids.shape[1]
    assert context_length == SMALL_CORPUS.context_length
    for domain in ("code", "science", "stories"):
        texts = [
            t for t, d in zip(documents["text"], documents["domain"], strict=True) if d == domain
        ]
        stream = []
        for text in texts:
            stream += tokenizer(text, add_special_tokens=False)["input_ids"]
            stream.append(tokenizer.eos_token_id)
        rows = packed.of_domain(domain)
        assert len(rows) == len(stream) // context_length
        np.testing.assert_array_equal(rows.reshape(-1), np.asarray(stream[: rows.size]))


def test_manifest_reports_counts_and_rerun_is_skipped(small_corpus: Path) -> None:
    manifest = read_manifest(small_corpus)
    assert manifest["complete"]
    stats = manifest["stats"]["domains"]
    packed = load_sequences(small_corpus)
    for domain, row in stats.items():
        assert row["tokens"]["train"] == packed["train"].of_domain(domain).size
        assert row["documents"]["train"] + row["documents"]["validation"] <= 40
    before = (small_corpus / "manifest.json").stat().st_mtime_ns
    build_corpus(SMALL_CORPUS, small_corpus)
    assert (small_corpus / "manifest.json").stat().st_mtime_ns == before


def test_token_cap_limits_packed_tokens(tmp_path: Path) -> None:
    config = CorpusConfig(
        max_documents_per_domain=40,
        vocab_size=512,
        context_length=32,
        max_train_tokens_per_domain=1000,
        tokenizer_chars_per_domain=200_000,
    )
    stats = build_corpus(config, tmp_path / "capped")
    for row in stats["domains"].values():
        assert row["tokens"]["train"] == (1000 // 32) * 32


def test_interrupted_build_resumes_from_the_last_finished_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossdiff.corpus import build as build_module

    out = tmp_path / "corpus"

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_write_sequences", crash)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(SMALL_CORPUS, out)
    manifest = read_manifest(out)
    assert not manifest["complete"]
    assert manifest["steps"] == ["documents", "tokenizer"]
    assert not (out / "sequences").exists()
    documents_before = tree_hash(out / "documents")
    monkeypatch.undo()

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("finished steps must not run again")

    monkeypatch.setattr(build_module, "_write_documents", no_rebuild)
    monkeypatch.setattr(build_module, "_write_tokenizer", no_rebuild)
    build_corpus(SMALL_CORPUS, out)
    assert read_manifest(out)["complete"]
    assert tree_hash(out / "documents") == documents_before
    assert load_sequences(out)["train"].input_ids.shape[1] == 32


def test_an_existing_tokenizer_directory_is_used_instead_of_training(
    small_corpus: Path, tmp_path: Path
) -> None:
    config = CorpusConfig(
        domains=("stories",),
        max_documents_per_domain=10,
        context_length=16,
        tokenizer=str(small_corpus / "tokenizer"),
    )
    build_corpus(config, tmp_path / "corpus")
    given = load_tokenizer(small_corpus / "tokenizer")
    used = load_tokenizer(tmp_path / "corpus" / "tokenizer")
    assert used.get_vocab() == given.get_vocab()
    assert len(used) == 512  # the given tokenizer's size, not the config's default 8192
