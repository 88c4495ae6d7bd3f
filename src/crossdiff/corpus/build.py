"""Build the corpus stage: documents -> split -> tokenizer -> packed sequences, each resumable.

Every step streams: documents are read, split and written one at a time, and sequences are
tokenised and packed a block of rows at a time, so memory stays flat in the corpus size (the
de-duplication set holds 16 bytes a document).

Layout of the stage directory::

    documents/   DatasetDict train/validation: name, domain, text   (duplicates removed)
    tokenizer/   Hugging Face tokenizer directory
    sequences/   DatasetDict train/validation: input_ids [context_length] int32, domain
    manifest.json
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdiff.corpus.arrow import SplitWriter, read_batches, write_dataset_dict
from crossdiff.corpus.config import CorpusConfig
from crossdiff.corpus.packing import pack_rows, token_stream
from crossdiff.corpus.sources import CorpusSource, Document, parse_source_spec
from crossdiff.corpus.tokenizer import load_tokenizer, train_bpe_tokenizer
from crossdiff.errors import ConfigError, DamagedFileError, unknown_choice
from crossdiff.plugins import CrossdiffPluginManager, collect, create_plugin_manager
from crossdiff.progress import progress_bar
from crossdiff.stages import (
    atomic_directory,
    fingerprint,
    prepare_stage,
    require_stage,
    stage_lock,
    write_manifest,
)

SPLITS = ("train", "validation")
STAGE = "corpus"


@dataclass(frozen=True)
class SplitDocuments:
    """The kept documents of one domain, by split, and how many duplicates were dropped."""

    train: list[Document]
    validation: list[Document]
    duplicates_removed: int


def available_sources(manager: CrossdiffPluginManager) -> dict[str, CorpusSource]:
    """Every corpus source the plugins provide, by domain (the newest plugin wins a clash)."""
    sources: dict[str, CorpusSource] = {}
    for source in collect(manager.hook.crossdiff_corpus_sources()):
        sources.setdefault(source.domain, source)
    return sources


def resolve_sources(config: CorpusConfig, manager: CrossdiffPluginManager) -> list[CorpusSource]:
    """The source of each configured domain: the user's override, else a plugin's source."""
    plugin_sources = available_sources(manager)
    resolved = []
    for domain in config.domains:
        if domain in config.sources:
            resolved.append(parse_source_spec(domain, config.sources[domain]))
        elif domain in plugin_sources:
            resolved.append(plugin_sources[domain])
        else:
            raise unknown_choice("domain", domain, plugin_sources)
    return resolved


@dataclass
class SplitCounts:
    """What splitting one domain's documents kept, by split, and how many duplicates it dropped."""

    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    """Split -> documents kept."""
    characters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    """Split -> characters of the documents kept."""
    duplicates_removed: int = 0
    """Documents dropped as exact duplicates of an earlier one."""


def assign_splits(
    documents: Iterable[Document],
    domain: str,
    config: CorpusConfig,
    seen: set[bytes],
    counts: SplitCounts | None = None,
) -> Iterator[tuple[str, Document]]:
    """Yield ``(split, document)`` for each kept document of one domain as it is read.

    Exact duplicates are dropped (also across domains, via ``seen``, 16 bytes a document); each
    kept document's split is drawn from a seeded hash of its text. Reading stops after
    ``max_documents_per_domain`` documents or ``max_characters_per_domain`` characters. Training
    documents read before the domain's first validation document wait (about
    ``1 / val_fraction`` of them), so that a domain that draws none still holds one out: the one
    with the smallest draw. ``counts`` receives the tallies.
    """
    counts = counts if counts is not None else SplitCounts()
    waiting: list[tuple[float, Document]] = []
    any_validation, kept, characters = False, 0, 0

    def emit(split: str, document: Document) -> tuple[str, Document]:
        counts.documents[split] += 1
        counts.characters[split] += len(document.text)
        return split, document

    for document in documents:
        digest = hashlib.sha256(document.text.encode("utf-8"))
        key = digest.digest()[:16]
        if key in seen:
            counts.duplicates_removed += 1
            continue
        seen.add(key)
        draw = int(hashlib.sha256(f"{config.seed}:{digest.hexdigest()}".encode()).hexdigest(), 16)
        if draw / 2**256 < config.val_fraction:
            any_validation = True
            yield emit("validation", document)
            yield from (emit("train", waiting_document) for _, waiting_document in waiting)
            waiting = []
        elif any_validation:
            yield emit("train", document)
        else:
            waiting.append((draw / 2**256, document))
        kept += 1
        characters += len(document.text)
        if config.max_documents_per_domain and kept >= config.max_documents_per_domain:
            break
        if config.max_characters_per_domain and characters >= config.max_characters_per_domain:
            break
    if not kept:
        raise ConfigError(f"domain {domain!r}: the source yielded no documents")
    if len(waiting) >= 2:  # tiny corpora: still hold one document out
        smallest = min(waiting, key=lambda pair: pair[0])
        waiting.remove(smallest)
        yield emit("validation", smallest[1])
    yield from (emit("train", document) for _, document in waiting)
    if not counts.documents["train"]:
        raise ConfigError(f"domain {domain!r}: too few documents ({kept}) to train on")


def split_documents(
    documents: Iterable[Document], domain: str, config: CorpusConfig, seen: set[bytes]
) -> SplitDocuments:
    """:func:`assign_splits`, collected in lists (for small inputs and tests)."""
    counts = SplitCounts()
    parts: dict[str, list[Document]] = {split: [] for split in SPLITS}
    for split, document in assign_splits(documents, domain, config, seen, counts):
        parts[split].append(document)
    return SplitDocuments(parts["train"], parts["validation"], counts.duplicates_removed)


def build_corpus(
    config: CorpusConfig,
    out_dir: str | Path,
    manager: CrossdiffPluginManager | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build (or finish building) the corpus stage in ``out_dir``; return the manifest's stats.

    Each step is written atomically and recorded, so an interrupted build resumes where it
    stopped, and a finished build with the same config is skipped. A directory built with other
    settings is refused (naming them) or, with ``overwrite``, rebuilt from scratch.
    """
    out_dir = Path(out_dir)
    settings = config.record()
    with stage_lock(out_dir):
        previous = prepare_stage(out_dir, STAGE, settings, overwrite)
        if previous is not None and previous.get("complete"):
            return previous["stats"]
        return _build(config, out_dir, manager or create_plugin_manager(), settings, previous)


def _build(
    config: CorpusConfig,
    out_dir: Path,
    manager: CrossdiffPluginManager,
    settings: dict[str, Any],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    done = set(previous.get("steps", [])) if previous else set()
    stats: dict[str, Any] = previous.get("stats", {}) if done else {}

    def record(step: str) -> None:
        done.add(step)
        write_manifest(out_dir, STAGE, settings, complete=False, steps=sorted(done), stats=stats)

    if "documents" not in done:
        stats = {"domains": _write_documents(config, manager, out_dir / "documents")}
        record("documents")
    if "tokenizer" not in done:
        _write_tokenizer(config, out_dir)
        record("tokenizer")
    if "sequences" not in done:
        for domain, counts in _write_sequences(config, out_dir).items():
            stats["domains"][domain].update(counts)
        record("sequences")
    write_manifest(out_dir, STAGE, settings, complete=True, steps=sorted(done), stats=stats)
    return stats


def _write_documents(
    config: CorpusConfig, manager: CrossdiffPluginManager, target: Path
) -> dict[str, dict[str, Any]]:
    """Read every domain's source once, a document at a time, into the documents dataset."""
    import datasets

    features = datasets.Features({c: datasets.Value("string") for c in ("name", "domain", "text")})
    stats: dict[str, dict[str, Any]] = {}
    seen: set[bytes] = set()
    with atomic_directory(target) as tmp:
        writers = {split: SplitWriter(tmp / split, features) for split in SPLITS}
        for source in resolve_sources(config, manager):
            documents = progress_bar(
                source.documents(), desc=f"reading {source.domain}", unit=" docs"
            )
            counts = SplitCounts()
            for split, document in assign_splits(documents, source.domain, config, seen, counts):
                row = {"name": document.name, "domain": source.domain, "text": document.text}
                writers[split].add(row, len(document.text))
            stats[source.domain] = {
                "source": source.description,
                "documents": counts.documents,
                "duplicates_removed": counts.duplicates_removed,
                "characters": counts.characters,
            }
        for writer in writers.values():
            writer.close()
        write_dataset_dict(tmp, SPLITS)
    return stats


def _write_tokenizer(config: CorpusConfig, out_dir: Path) -> None:
    if config.tokenizer is not None:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        batches = read_batches(out_dir / "documents" / "train", ("domain", "text"))
        tokenizer = train_bpe_tokenizer(
            _tokenizer_sample(batches, config.domains, config.tokenizer_chars_per_domain),
            config.vocab_size,
        )
    with atomic_directory(out_dir / "tokenizer") as tmp:
        tokenizer.save_pretrained(str(tmp))


def _tokenizer_sample(
    batches: Iterable[dict[str, list]], domains: Iterable[str], chars_per_domain: int
) -> Iterator[str]:
    """The first ``chars_per_domain`` characters of training text of each domain, in order."""
    budget = dict.fromkeys(domains, chars_per_domain)
    for batch in batches:
        for domain, text in zip(batch["domain"], batch["text"], strict=True):
            if budget[domain] > 0:
                budget[domain] -= len(text)
                yield text
        if all(left <= 0 for left in budget.values()):
            return


def _domain_texts(split_dir: Path, domain: str) -> Iterator[str]:
    """The texts of ``domain`` in a documents split, in order (a domain's rows are contiguous:
    the documents step writes one domain after the other)."""
    started = False
    for batch in read_batches(split_dir, ("domain", "text")):
        for row_domain, text in zip(batch["domain"], batch["text"], strict=True):
            if row_domain == domain:
                started = True
                yield text
            elif started:
                return


def _write_sequences(config: CorpusConfig, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Tokenise and pack each split, domain after domain, a block of rows at a time."""
    import datasets
    import pyarrow as pa

    tokenizer = load_tokenizer(out_dir / "tokenizer")
    length = config.context_length
    schema = pa.schema([("input_ids", pa.list_(pa.int32(), length)), ("domain", pa.string())])
    features = datasets.Features.from_arrow_schema(schema)
    limits = {
        "train": config.max_train_tokens_per_domain,
        "validation": config.max_val_tokens_per_domain,
    }
    counts: dict[str, dict[str, Any]] = {d: {"tokens": {}, "sequences": {}} for d in config.domains}
    with atomic_directory(out_dir / "sequences") as tmp:
        for split in SPLITS:
            writer = SplitWriter(tmp / split, features)
            for domain in config.domains:
                stream = progress_bar(
                    token_stream(_domain_texts(out_dir / "documents" / split, domain), tokenizer),
                    desc=f"tokenising {domain} {split}",
                    unit=" docs",
                    leave=False,
                )
                n_rows = 0
                for rows in pack_rows(stream, length, limits[split]):  # [n, length]
                    ids = pa.array(rows.reshape(-1), type=pa.int32())
                    block = pa.FixedSizeListArray.from_arrays(ids, length)
                    domains = pa.array([domain] * len(rows), type=pa.string())
                    writer.write(pa.Table.from_arrays([block, domains], schema=schema))
                    n_rows += len(rows)
                counts[domain]["tokens"][split] = n_rows * length
                counts[domain]["sequences"][split] = n_rows
            writer.close()
        write_dataset_dict(tmp, SPLITS)
    return counts


def corpus_fingerprint(out_dir: str | Path) -> str:
    """What a finished corpus holds (its settings and counts), independent of where it lies."""
    manifest = require_stage(out_dir, STAGE, "crossdiff corpus build")
    return fingerprint([manifest.get("config"), manifest.get("stats")])


def load_documents(out_dir: str | Path) -> Any:
    """The corpus stage's documents, a ``datasets.DatasetDict`` with train and validation."""
    import datasets

    return datasets.load_from_disk(str(Path(out_dir) / "documents"))


@dataclass(frozen=True)
class PackedSequences:
    """One split of packed sequences as arrays."""

    input_ids: Any
    """int32 array ``[n_sequences, context_length]``."""
    domains: Any
    """str array ``[n_sequences]``: the domain each sequence was cut from."""

    def of_domain(self, domain: str) -> Any:
        """The rows of ``input_ids`` cut from ``domain``."""
        return self.input_ids[self.domains == domain]


def load_sequences(out_dir: str | Path) -> dict[str, PackedSequences]:
    """The corpus stage's packed sequences, by split (``train``, ``validation``)."""
    import datasets
    import numpy as np

    require_stage(out_dir, STAGE, "crossdiff corpus build")
    path = Path(out_dir) / "sequences"
    if not path.is_dir():
        raise DamagedFileError(
            f"no packed sequences at {str(path)!r} though the corpus manifest says complete: "
            "rebuild it with `crossdiff corpus build --overwrite`"
        )
    splits = {}
    for split, data in datasets.load_from_disk(str(path)).items():
        table = data.data.table
        ids = table.column("input_ids").combine_chunks()
        context_length = ids.type.list_size
        flat = ids.flatten().to_numpy(zero_copy_only=False)
        domains = np.asarray(table.column("domain").to_pylist(), dtype=str)
        splits[split] = PackedSequences(flat.reshape(-1, context_length), domains)
    return splits
