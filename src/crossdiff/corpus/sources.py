"""Corpus sources: a domain name and the text documents it provides.

Plugins provide sources through the ``crossdiff_corpus_sources`` hook; users override any domain
with a Hugging Face dataset (``hf:NAME[:SPLIT[:COLUMN]]``) or local files.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from crossdiff.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".jsonl", ".gz")


@dataclass(frozen=True)
class Document:
    """One text document: a name stable across builds, and its text."""

    name: str
    text: str


@dataclass(frozen=True)
class CorpusSource:
    """The documents of one domain, produced on demand by ``load``."""

    domain: str
    description: str
    load: Callable[[], Iterable[Document]]

    def documents(self) -> Iterator[Document]:
        """Yield the source's non-empty documents."""
        for document in self.load():
            if document.text.strip():
                yield document


def local_files_source(domain: str, paths: Sequence[str | Path]) -> CorpusSource:
    """A source reading local files: each text file is a document; ``.jsonl`` lines with a
    ``text`` field are one document each; ``.gz`` files are decompressed; directories recurse."""
    files = _expand(domain, paths)

    def load() -> Iterator[Document]:
        for path in files:
            yield from _read_file(path)

    shown = ", ".join(str(p) for p in paths)
    return CorpusSource(domain, f"local files: {shown}", load)


def hf_dataset_source(
    domain: str, name: str, split: str = "train", text_column: str = "text"
) -> CorpusSource:
    """A source reading a Hugging Face dataset by hub name or local path (``load_dataset``)."""

    def load() -> Iterator[Document]:
        import datasets  # heavy: only when this source is used

        try:
            data = datasets.load_dataset(name, split=split)
        except Exception as error:
            raise ConfigError(
                f"domain {domain!r}: could not load dataset {name!r} split {split!r}: {error}"
            ) from error
        if text_column not in data.column_names:
            raise ConfigError(
                f"domain {domain!r}: dataset {name!r} has no column {text_column!r}; "
                f"columns: {', '.join(data.column_names)}"
            )
        for index, text in enumerate(data[text_column]):
            yield Document(f"{name}/{split}/{index}", text or "")

    return CorpusSource(
        domain, f"Hugging Face dataset {name} ({split}, column {text_column})", load
    )


def parse_source_spec(domain: str, spec: str) -> CorpusSource:
    """A source from a command-line spec: ``hf:NAME[:SPLIT[:COLUMN]]`` or comma-separated paths."""
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if not parts[0] or len(parts) > 3:
            raise ConfigError(
                f"domain {domain!r}: source {spec!r} is not of the form hf:NAME[:SPLIT[:COLUMN]]"
            )
        return hf_dataset_source(domain, *parts)
    return local_files_source(domain, [p for p in spec.split(",") if p])


def _expand(domain: str, paths: Sequence[str | Path]) -> list[Path]:
    if not paths:
        raise ConfigError(f"domain {domain!r}: no source files given")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise ConfigError(
                    f"domain {domain!r}: directory {str(path)!r} holds no text files "
                    f"(looked for {', '.join(TEXT_SUFFIXES)})"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"domain {domain!r}: source path {str(path)!r} does not exist")
    return files


def _read_file(path: Path) -> Iterator[Document]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            for number, line in enumerate(handle):
                if line.strip():
                    yield Document(f"{path}:{number}", json.loads(line).get("text", ""))
        else:
            yield Document(str(path), handle.read())
