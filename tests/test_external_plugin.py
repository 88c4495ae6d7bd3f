"""A third-party plugin distribution, pip-installed into a temporary directory, is used as-is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PYTHON = sys.executable
CROSSDIFF = [PYTHON, "-m", "crossdiff"]

GOOD_PLUGIN = '''
"""An external crossdiff plugin: a corpus domain of limericks and a word-count analysis."""
from crossdiff import hookimpl
from crossdiff.analysis import AnalysisResult
from crossdiff.corpus import CorpusSource, Document, load_documents

LINES = ["there once was a {0} from {1}", "who never would {0} any {1}",
         "it sang to the {1}", "and danced with a {0}", "till the {0} ran away with the {1}"]
WORDS = ["cat", "dog", "moon", "river", "kettle", "garden", "violin", "teapot", "lantern"]


def limericks():
    for i in range(60):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 5 + 3) % len(WORDS)]
        yield Document(f"limerick-{i}", "\\n".join(l.format(a, b) for l in LINES) + f" ({i})")


class WordCount:
    name = "word_count"
    description = "words per domain in the training documents"
    needs = ("corpus",)

    def run(self, context):
        docs = load_documents(context.stage_dir("corpus"))["train"]
        counts = {}
        for domain, text in zip(docs["domain"], docs["text"]):
            counts[domain] = counts.get(domain, 0) + len(text.split())
        return AnalysisResult(counts)


@hookimpl
def crossdiff_corpus_sources():
    return [CorpusSource("limericks", "generated limericks", limericks)]


@hookimpl
def crossdiff_analyses():
    return [WordCount()]
'''


def make_distribution(root: Path, name: str, module: str, source: str) -> Path:
    """Write a minimal setuptools project with one module and a ``crossdiff`` entry point."""
    project = root / name
    project.mkdir()
    (project / f"{module}.py").write_text(source)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "1.2.3"
        [project.entry-points.crossdiff]
        {module} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
    ''')
    )
    return project


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the good and the broken plugin, installed with pip --target."""
    root = tmp_path_factory.mktemp("plugins")
    target = root / "site"
    good = make_distribution(root, "crossdiff-limericks", "crossdiff_limericks", GOOD_PLUGIN)
    broken = make_distribution(
        root, "crossdiff-broken", "crossdiff_broken", "import module_that_does_not_exist\n"
    )
    for project in (good, broken):
        subprocess.run(
            [
                PYTHON,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(target),
                str(project),
            ],
            check=True,
            capture_output=True,
        )
    return target


def run_cli(args: list[str], plugin_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(plugin_path), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CROSSDIFF, *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_and_broken_one_is_named(plugin_path: Path) -> None:
    result = run_cli(["plugins", "--json"], plugin_path)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["crossdiff_limericks"]["provides"] == {
        "corpus source": ["limericks"],
        "analysis": ["word_count"],
    }
    assert rows["crossdiff_limericks"]["origin"].startswith("crossdiff-limericks==1.2.3")
    assert rows["crossdiff_limericks"]["error"] is None
    assert "ModuleNotFoundError" in rows["crossdiff_broken"]["error"]
    assert "module_that_does_not_exist" in rows["crossdiff_broken"]["error"]
    assert rows["corpus"]["provides"]["corpus source"] == ["code", "science", "stories"]
    assert result.returncode == 1  # something failed to load, and it says so
    table = run_cli(["plugins"], plugin_path).stdout
    assert "crossdiff_broken" in table and "ERROR" in table


def test_installed_plugin_corpus_source_and_analysis_are_used(
    plugin_path: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    built = run_cli(
        [
            "corpus",
            "build",
            "--out",
            str(run / "corpus"),
            "--domain",
            "limericks",
            "--domain",
            "stories",
            "--max-documents-per-domain",
            "60",
            "--vocab-size",
            "400",
            "--context-length",
            "16",
        ],
        plugin_path,
    )
    assert built.returncode == 0, built.stderr
    assert "limericks" in built.stdout
    analysed = run_cli(["analyze", "word_count", "--run", str(run)], plugin_path)
    assert analysed.returncode == 0, analysed.stderr
    summary = json.loads((run / "analyses" / "word_count" / "summary.json").read_text())
    assert summary["limericks"] > 1000
    assert summary["stories"] > 1000
