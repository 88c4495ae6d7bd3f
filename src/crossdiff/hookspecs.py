"""The crossdiff plugin contract: every hook a plugin may implement.

A plugin is any module or object with functions named like these hooks and marked with
``crossdiff.hookimpl``. Each hook returns providers; the core decides how to combine them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from crossdiff.adapters import AdapterFactory, ModelLoader
    from crossdiff.analysis import Analysis
    from crossdiff.corpus.sources import CorpusSource

hookspec = pluggy.HookspecMarker("crossdiff")

# ---------------------------------------------------------------- corpus stage


@hookspec
def crossdiff_corpus_sources() -> Iterable[CorpusSource]:
    """Return corpus sources, each providing the text documents of one named domain."""


# ---------------------------------------------------------------- model stage


@hookspec
def crossdiff_model_adapters() -> Iterable[AdapterFactory]:
    """Return model adapter factories; the first whose ``can_adapt(model)`` is true wins."""


@hookspec
def crossdiff_model_loaders() -> Iterable[ModelLoader]:
    """Return model loaders; the first whose ``can_load(name_or_path)`` is true loads it."""


# ---------------------------------------------------------------- analysis stage


@hookspec
def crossdiff_analyses() -> Iterable[Analysis]:
    """Return analyses, each with a unique name, the inputs it needs and a ``run`` method."""
