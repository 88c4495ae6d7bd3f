"""The plugin manager: registration, listing, provider order, and broken plugins."""

from __future__ import annotations

from crossdiff import hookimpl
from crossdiff.analysis import AnalysisResult, available_analyses
from crossdiff.corpus.build import available_sources
from crossdiff.corpus.sources import CorpusSource, Document
from crossdiff.plugins import create_plugin_manager, describe_plugins


class PoemsPlugin:
    """An inline plugin providing one corpus source and one analysis."""

    @hookimpl
    def crossdiff_corpus_sources(self) -> list[CorpusSource]:
        return [CorpusSource("poems", "two poems", lambda: [Document("p", "roses are red")])]

    @hookimpl
    def crossdiff_analyses(self) -> list[object]:
        return [Counter()]


class Counter:
    name = "count"
    description = "counts nothing"
    needs = ()

    def run(self, context: object) -> AnalysisResult:
        return AnalysisResult({"n": 0})


class StoriesOverride:
    """A later plugin overriding the built-in ``stories`` domain."""

    @hookimpl
    def crossdiff_corpus_sources(self) -> list[CorpusSource]:
        return [CorpusSource("stories", "mine", lambda: [Document("s", "once upon a time")])]


class Misspelt:
    """A plugin whose hook name has a typo: must be reported, not silently ignored."""

    @hookimpl
    def crossdiff_corpus_source(self) -> list[CorpusSource]:
        return []


def test_builtin_plugins_load_through_entry_points() -> None:
    manager = create_plugin_manager()
    assert {"corpus", "analyses"} <= set(manager.plugin_names())
    assert "entry point" in manager.origins["corpus"]
    assert {"code", "science", "stories"} <= set(available_sources(manager))
    assert not manager.failures


def test_inline_plugin_is_listed_with_kinds_and_provides() -> None:
    manager = create_plugin_manager([("poems", PoemsPlugin())], load_entry_points=False)
    (row,) = describe_plugins(manager)
    assert row.name == "poems"
    assert row.provides == {"corpus source": ["poems"], "analysis": ["count"]}
    assert row.error is None
    assert "count" in available_analyses(manager)


def test_a_later_plugin_wins_a_domain_clash() -> None:
    manager = create_plugin_manager([("mine", StoriesOverride())])
    source = available_sources(manager)["stories"]
    assert source.description == "mine"


def test_a_misspelt_hook_is_reported_and_the_rest_still_load() -> None:
    manager = create_plugin_manager([("typo", Misspelt()), ("poems", PoemsPlugin())])
    assert [f.name for f in manager.failures] == ["typo"]
    assert "crossdiff_corpus_source" in manager.failures[0].error
    assert "poems" in manager.plugin_names()
    assert "typo" not in manager.plugin_names()
    rows = {row.name: row for row in describe_plugins(manager)}
    assert rows["typo"].error
    assert rows["poems"].error is None
