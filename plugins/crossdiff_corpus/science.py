"""The ``science`` domain: long docstrings of scientific packages, read with ``ast`` (no import)."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from crossdiff.corpus.sources import Document

PACKAGES = ("scipy", "statsmodels", "sympy", "numpy", "networkx", "pandas")
MIN_CHARS = 200
EXCLUDED_PARTS = frozenset({"tests", "test", "testing", "_vendor", "vendored", "benchmarks"})


def documents() -> Iterator[Document]:
    """Yield every docstring longer than 200 characters of the installed scientific packages."""
    for package in PACKAGES:
        root = _package_root(package)
        if root is None:
            continue
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root.parent)
            if EXCLUDED_PARTS.intersection(relative.parts):
                continue
            yield from _docstrings(path, relative.as_posix())


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _docstrings(path: Path, name: str) -> Iterator[Document]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return
    nodes = [tree, *ast.walk(tree)]
    for node in nodes:
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        text = ast.get_docstring(node, clean=True)
        if text and len(text) > MIN_CHARS:
            label = getattr(node, "name", "<module>")
            yield Document(f"{name}:{node.lineno if hasattr(node, 'lineno') else 0}:{label}", text)
