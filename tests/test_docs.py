"""Docs stay true: every hook is documented with its signature, and the examples run."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

from crossdiff import hookspecs
from crossdiff.analysis import run_analysis
from crossdiff.corpus import CorpusConfig, build_corpus
from crossdiff.plugins import HOOK_KINDS, create_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_DOC = (ROOT / "docs" / "plugins.md").read_text()


def hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if name.startswith("crossdiff_")]


def documented_example(tag: str) -> str:
    """The python block right after ``<!-- example: TAG -->`` in docs/plugins.md."""
    match = re.search(rf"<!-- example: {tag} -->\s*```python\n(.*?)```", PLUGINS_DOC, re.S)
    assert match, f"no example tagged {tag!r} in docs/plugins.md"
    return match.group(1)


def test_every_hook_is_documented_with_its_signature_and_docstring() -> None:
    for name in hook_names():
        function = getattr(hookspecs, name)
        parameters = ", ".join(inspect.signature(function).parameters)
        returns = inspect.signature(function).return_annotation
        heading = f"### `{name}({parameters}) -> {returns}`"
        assert heading in PLUGINS_DOC, heading
        assert function.__doc__.strip().replace("``", "`") in PLUGINS_DOC, name


def test_every_hook_has_a_kind_for_the_plugin_listing() -> None:
    assert set(hook_names()) == set(HOOK_KINDS)


def test_the_documented_plugin_example_runs(tmp_path: Path) -> None:
    module = types.ModuleType("crossdiff_haiku")
    exec(compile(documented_example("haiku-plugin"), "docs/plugins.md", "exec"), module.__dict__)
    manager = create_plugin_manager([("haiku", module)])
    config = CorpusConfig(
        domains=("haiku", "stories"),
        max_documents_per_domain=60,
        vocab_size=400,
        context_length=16,
    )
    build_corpus(config, tmp_path / "corpus", manager)
    result, target = run_analysis("characters_per_domain", tmp_path, manager)
    assert set(result.summary) == {"haiku", "stories"}
    assert result.summary["haiku"] > 1000
    assert (target / "characters.png").stat().st_size > 1000


def test_pipeline_md_lists_every_default_as_the_code_has_it() -> None:
    """docs/pipeline.md's table of defaults is the one read from the dataclasses, exactly."""
    from crossdiff.pipeline.defaults import SECTIONS_END, SECTIONS_START, defaults_table

    page = (ROOT / "docs" / "pipeline.md").read_text()
    shown = page.split(SECTIONS_START, 1)[1].split(SECTIONS_END, 1)[0].strip()
    assert shown == defaults_table()
    assert "| `crosscoder.sparsity_coeff` | `0.3` |" in shown  # the recipe's λ, not 0
