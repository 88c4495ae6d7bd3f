"""Built-in analyses, each in a module of its own, registered like any third-party plugin."""

from __future__ import annotations

from crossdiff import hookimpl
from crossdiff.analysis import Analysis
from crossdiff_analyses.corpus_stats import CorpusStats
from crossdiff_analyses.dashboards import Dashboards
from crossdiff_analyses.density import Density
from crossdiff_analyses.feature_classes import FeatureClasses


@hookimpl
def crossdiff_analyses() -> list[Analysis]:
    """The built-in analyses."""
    return [CorpusStats(), FeatureClasses(), Density(), Dashboards()]
