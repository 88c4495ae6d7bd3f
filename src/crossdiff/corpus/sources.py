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


LOCAL_OPTIONS = ("encoding", "errors")
"""Options of a local-files spec after ``?``: the text encoding (default utf-8) and what to do
with bytes it cannot decode (default ``strict``: an error naming the file and byte offset)."""
DECODE_ERRORS = ("strict", "replace", "ignore", "backslashreplace", "surrogateescape")


def local_files_source(
    domain: str, paths: Sequence[str | Path], encoding: str = "utf-8", errors: str = "strict"
) -> CorpusSource:
    """A source reading local files: each text file is a document; ``.jsonl`` lines with a
    ``text`` field are one document each; ``.gz`` files are decompressed; directories recurse.

    Text is decoded with ``encoding``; with ``errors="strict"`` (the default) a byte that does
    not decode is a :class:`ConfigError` naming the file and its byte offset, never a silent
    replacement character."""
    import codecs

    files = _expand(domain, paths)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"domain {domain!r}: unknown text encoding {encoding!r}") from None
    if errors not in DECODE_ERRORS:
        raise unknown_choice(f"errors setting of domain {domain!r}", errors, DECODE_ERRORS)

    def load() -> Iterator[Document]:
        for path in files:
            yield from _read_file(path, encoding, errors)

    shown = ", ".join(str(p) for p in paths)
    how = "" if (encoding, errors) == ("utf-8", "strict") else f" ({encoding}, errors={errors})"
    return CorpusSource(domain, f"local files: {shown}{how}", load)


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
        options = _options(domain, spec, query, HF_OPTIONS)
        return hf_dataset_source(domain, *parts, **options)
    body, _, query = spec.partition("?")
    options = _options(domain, spec, query, LOCAL_OPTIONS)
    return local_files_source(domain, [p for p in body.split(",") if p], **options)


def _options(domain: str, spec: str, query: str, known: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in (part for part in query.split("&") if part):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"domain {domain!r}: option {item!r} of {spec!r} is not KEY=VALUE")
        if key not in known:
            raise unknown_choice(f"option of source {spec!r}", key, known)
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


def _read_file(path: Path, encoding: str = "utf-8", errors: str = "strict") -> Iterator[Document]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            offset = 0
            for number, line in enumerate(handle):
                text = _decode(line, path, offset, encoding, errors)
                offset += len(line)
                if text.strip():
                    yield Document(f"{path}:{number}", json.loads(text).get("text", ""))
        else:
            yield Document(str(path), _decode(handle.read(), path, 0, encoding, errors))


def _decode(data: bytes, path: Path, offset: int, encoding: str, errors: str) -> str:
    """``data`` (which starts at byte ``offset`` of ``path``) decoded; an undecodable byte under
    ``errors="strict"`` is a one-line error naming the file and the byte's offset."""
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as error:
        where = "of the decompressed text " if path.suffix == ".gz" else ""
        raise ConfigError(
            f"{str(path)!r} is not valid {encoding}: byte 0x{data[error.start]:02x} at byte "
            f"offset {offset + error.start} {where}does not decode ({error.reason}); convert the "
            f"file, or name its encoding in the source spec, e.g. '{path}?encoding=latin-1' "
            "(or '?errors=replace' to replace undecodable bytes with U+FFFD)"
        ) from None
