"""Built-in analyses, each in a module of its own, registered like any third-party plugin."""

from __future__ import annotations

from crossdiff import hookimpl
from crossdiff.analysis import Analysis
from crossdiff_analyses.corpus_stats import CorpusStats


@hookimpl
def crossdiff_analyses() -> list[Analysis]:
    """The built-in analyses."""
    return [CorpusStats()]
