"""Corpus sources: a domain name and the text documents it provides.

Plugins provide sources through the ``crossdiff_corpus_sources`` hook; users override any domain
with a Hugging Face dataset (``hf:NAME[:SPLIT[:COLUMN]][?config=C&data_dir=D]``) or local files.
Every source yields its documents one at a time, so a corpus build never holds a whole source.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from crossdiff.errors import ConfigError, unknown_choice

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


HF_OPTIONS = ("config", "data_dir")
"""Options of an ``hf:`` spec after ``?``: the dataset's configuration name, its data folder."""


def hf_dataset_source(
    domain: str,
    name: str,
    split: str = "train",
    text_column: str = "text",
    config: str | None = None,
    data_dir: str | None = None,
) -> CorpusSource:
    """A source reading a Hugging Face dataset a document at a time.

    ``name`` is a hub name (streamed: nothing is downloaded beyond what is read), a local
    directory of data files (``load_dataset``, streamed), or a directory written by
    ``save_to_disk`` (a Dataset, or a DatasetDict whose ``split`` is read), read a record batch
    at a time. ``config`` and ``data_dir`` are passed to ``load_dataset``.
    """

    def load() -> Iterator[Document]:
        from crossdiff.corpus.arrow import is_saved_dataset

        if is_saved_dataset(name):
            texts = _saved_texts(domain, Path(name), split, text_column)
        else:
            texts = _hub_texts(domain, name, split, text_column, config, data_dir)
        for index, text in enumerate(texts):
            yield Document(f"{name}/{split}/{index}", text or "")

    options = "".join(f", {k} {v}" for k, v in (("config", config), ("data_dir", data_dir)) if v)
    return CorpusSource(
        domain, f"Hugging Face dataset {name} ({split}, column {text_column}{options})", load
    )


def _hub_texts(
    domain: str, name: str, split: str, column: str, config: str | None, data_dir: str | None
) -> Iterator[str]:
    import datasets  # heavy: only when this source is used

    try:
        data = datasets.load_dataset(name, config, split=split, data_dir=data_dir, streaming=True)
        names = data.column_names
        if names is None:  # some streamed datasets only know their columns once read
            names = list(next(iter(data)).keys())
    except Exception as error:
        raise ConfigError(
            f"domain {domain!r}: could not load dataset {name!r} split {split!r}: {error}"
        ) from error
    if column not in names:
        raise ConfigError(
            f"domain {domain!r}: dataset {name!r} has no column {column!r}; "
            f"columns: {', '.join(names)}"
        )
    for row in data:
        yield row[column]


def _saved_texts(domain: str, path: Path, split: str, column: str) -> Iterator[str]:
    from crossdiff.corpus.arrow import read_batches, saved_columns

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise ConfigError(
                f"domain {domain!r}: dataset {str(path)!r} has no split {split!r}; "
                f"splits: {', '.join(splits)}"
            )
        path = path / split
    columns = saved_columns(path)
    if column not in columns:
        raise ConfigError(
            f"domain {domain!r}: dataset {str(path)!r} has no column {column!r}; "
            f"columns: {', '.join(columns)}"
        )
    for batch in read_batches(path, (column,)):
        yield from batch[column]


def parse_source_spec(domain: str, spec: str) -> CorpusSource:
    """A source from a spec: ``hf:NAME[:SPLIT[:COLUMN]][?config=C&data_dir=D]`` or
    comma-separated local paths."""
    if spec.startswith("hf:"):
        body, _, query = spec[3:].partition("?")
        parts = body.split(":")
        if not parts[0] or len(parts) > 3:
            raise ConfigError(
                f"domain {domain!r}: source {spec!r} is not of the form "
                "hf:NAME[:SPLIT[:COLUMN]][?config=C&data_dir=D]"
            )
        options = _hf_options(domain, spec, query)
        return hf_dataset_source(domain, *parts, **options)
    return local_files_source(domain, [p for p in spec.split(",") if p])


def _hf_options(domain: str, spec: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in (part for part in query.split("&") if part):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"domain {domain!r}: option {item!r} of {spec!r} is not KEY=VALUE")
        if key not in HF_OPTIONS:
            raise unknown_choice(f"option of source {spec!r}", key, HF_OPTIONS)
        options[key] = value
    return options


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
