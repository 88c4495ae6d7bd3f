"""Built-in corpus sources: code, scientific text and English stories, all offline.

- ``code``: the Python standard library's own source files (PSF licence), one file a document.
- ``science``: docstrings of more than 200 characters from the scientific Python packages installed
  with crossdiff's dependencies (scipy, statsmodels, sympy, numpy, networkx, pandas; BSD).
- ``stories``: Jane Austen's six novels and the King James Bible, bundled (public domain), one
  chapter a document.
"""

from __future__ import annotations

from crossdiff import hookimpl
from crossdiff.corpus.sources import CorpusSource
from crossdiff_corpus import science, stdlib_code, stories


@hookimpl
def crossdiff_corpus_sources() -> list[CorpusSource]:
    """The three default domains."""
    return [
        CorpusSource("code", "Python standard library source files", stdlib_code.documents),
        CorpusSource("science", "docstrings of installed scientific packages", science.documents),
        CorpusSource(
            "stories", "Jane Austen's novels and the KJV Bible, bundled", stories.documents
        ),
    ]
