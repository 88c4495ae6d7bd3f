"""The ``stories`` domain: bundled public-domain prose, one chapter a document."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from importlib import resources

from crossdiff.corpus.sources import Document

AUSTEN = "austen-novels.txt.gz"
KJV = "kjv-chapters.txt.gz"
AUSTEN_CHAPTER = re.compile(r"^(CHAPTER [IVXLC\d]+|Chapter \d+)\.?\s*$")
KJV_CHAPTER = re.compile(r"^## (.+)$")


def documents() -> Iterator[Document]:
    """Yield the chapters of Jane Austen's six novels, then of the King James Bible."""
    yield from _split(_read(AUSTEN), AUSTEN_CHAPTER, "austen")
    yield from _split(_read(KJV), KJV_CHAPTER, "kjv")


def _read(name: str) -> list[str]:
    data = resources.files("crossdiff_corpus").joinpath("data", name).read_bytes()
    return gzip.decompress(data).decode("utf-8").splitlines()


def _split(lines: list[str], heading: re.Pattern[str], prefix: str) -> Iterator[Document]:
    """Cut ``lines`` at each heading; text before the first heading is its own document."""
    title, chunk, number = "front", [], 0
    for line in lines:
        match = heading.match(line.strip())
        if match:
            if chunk:
                yield Document(f"{prefix}/{number:04d}/{title}", "\n".join(chunk).strip())
            title, chunk, number = match.group(1), [], number + 1
        else:
            chunk.append(line)
    if chunk:
        yield Document(f"{prefix}/{number:04d}/{title}", "\n".join(chunk).strip())
