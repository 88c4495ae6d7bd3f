"""Build the corpus stage: documents -> split -> tokenizer -> packed sequences, each resumable.

Layout of the stage directory::

    documents/   DatasetDict train/validation: name, domain, text   (duplicates removed)
    tokenizer/   Hugging Face tokenizer directory
    sequences/   DatasetDict train/validation: input_ids [context_length] int32, domain
    manifest.json
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.config import to_dict
from crossdiff.corpus.config import CorpusConfig
from crossdiff.corpus.packing import pack, token_stream
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


def split_documents(
    documents: Iterable[Document], domain: str, config: CorpusConfig, seen: set[str]
) -> SplitDocuments:
    """Drop exact duplicates (also across domains, via ``seen``) and split by a seeded hash."""
    train, validation, duplicates = [], [], 0
    kept: list[tuple[float, Document]] = []
    for document in documents:
        digest = hashlib.sha256(document.text.encode("utf-8")).hexdigest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        draw = int(hashlib.sha256(f"{config.seed}:{digest}".encode()).hexdigest(), 16) / 2**256
        kept.append((draw, document))
        if config.max_documents_per_domain and len(kept) >= config.max_documents_per_domain:
            break
    if not kept:
        raise ConfigError(f"domain {domain!r}: the source yielded no documents")
    for draw, document in kept:
        (validation if draw < config.val_fraction else train).append(document)
    if len(kept) >= 2 and not validation:  # tiny corpora: still hold one document out
        smallest = min(kept, key=lambda pair: pair[0])[1]
        train.remove(smallest)
        validation.append(smallest)
    if not train:
        raise ConfigError(f"domain {domain!r}: too few documents ({len(kept)}) to train on")
    return SplitDocuments(train, validation, duplicates)


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
    settings = to_dict(config)
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
    rows: dict[str, dict[str, list[str]]] = {
        s: {"name": [], "domain": [], "text": []} for s in SPLITS
    }
    stats: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for source in resolve_sources(config, manager):
        documents = progress_bar(source.documents(), desc=f"reading {source.domain}", unit=" docs")
        split = split_documents(documents, source.domain, config, seen)
        for name in SPLITS:
            for document in getattr(split, name):
                rows[name]["name"].append(document.name)
                rows[name]["domain"].append(source.domain)
                rows[name]["text"].append(document.text)
        stats[source.domain] = {
            "source": source.description,
            "documents": {"train": len(split.train), "validation": len(split.validation)},
            "duplicates_removed": split.duplicates_removed,
            "characters": {n: sum(len(d.text) for d in getattr(split, n)) for n in SPLITS},
        }
    with atomic_directory(target) as tmp:
        _dataset_dict(rows).save_to_disk(str(tmp))
    return stats


def _write_tokenizer(config: CorpusConfig, out_dir: Path) -> None:
    if config.tokenizer is not None:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        train = load_documents(out_dir)["train"]
        tokenizer = train_bpe_tokenizer(
            _tokenizer_sample(train, config.domains, config.tokenizer_chars_per_domain),
            config.vocab_size,
        )
    with atomic_directory(out_dir / "tokenizer") as tmp:
        tokenizer.save_pretrained(str(tmp))


def _tokenizer_sample(train: Any, domains: Iterable[str], chars_per_domain: int) -> Iterable[str]:
    """The first ``chars_per_domain`` characters of training text of each domain, in order."""
    budget = dict.fromkeys(domains, chars_per_domain)
    for domain, text in zip(train["domain"], train["text"], strict=True):
        if budget[domain] > 0:
            budget[domain] -= len(text)
            yield text


def _write_sequences(config: CorpusConfig, out_dir: Path) -> dict[str, dict[str, Any]]:
    import numpy as np

    documents = load_documents(out_dir)
    tokenizer = load_tokenizer(out_dir / "tokenizer")
    limits = {
        "train": config.max_train_tokens_per_domain,
        "validation": config.max_val_tokens_per_domain,
    }
    counts: dict[str, dict[str, Any]] = {d: {"tokens": {}, "sequences": {}} for d in config.domains}
    packed: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        data = documents[split]
        blocks, labels = [], []
        for domain in config.domains:
            texts = (t for t, d in zip(data["text"], data["domain"], strict=True) if d == domain)
            stream = progress_bar(
                token_stream(texts, tokenizer),
                desc=f"tokenising {domain} {split}",
                unit=" docs",
                leave=False,
            )
            rows = pack(stream, config.context_length, limits[split])
            counts[domain]["tokens"][split] = int(rows.size)
            counts[domain]["sequences"][split] = len(rows)
            blocks.append(rows)
            labels.extend([domain] * len(rows))
        packed[split] = {"input_ids": np.concatenate(blocks), "domain": labels}
    with atomic_directory(out_dir / "sequences") as tmp:
        _sequence_dataset_dict(packed, config.context_length).save_to_disk(str(tmp))
    return counts


def _dataset_dict(rows: dict[str, dict[str, list[str]]]) -> Any:
    import datasets
    import pyarrow as pa

    return datasets.DatasetDict(
        {split: _fingerprinted(pa.table(columns)) for split, columns in rows.items()}
    )


def _sequence_dataset_dict(packed: dict[str, dict[str, Any]], context_length: int) -> Any:
    import datasets
    import pyarrow as pa

    splits = {}
    for split, columns in packed.items():
        flat = pa.array(columns["input_ids"].reshape(-1), type=pa.int32())
        table = pa.table(
            {
                "input_ids": pa.FixedSizeListArray.from_arrays(flat, context_length),
                "domain": pa.array(columns["domain"], type=pa.string()),
            }
        )
        splits[split] = _fingerprinted(table)
    return datasets.DatasetDict(splits)


def _fingerprinted(table: Any) -> Any:
    """A Dataset whose fingerprint is a hash of its content, so equal builds save equal bytes."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    fingerprint = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]
    return datasets.Dataset(InMemoryTable(table), fingerprint=fingerprint)


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
