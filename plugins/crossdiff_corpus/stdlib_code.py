"""The ``code`` domain: Python standard library modules, excluding tests and generated data."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

from crossdiff.corpus.sources import Document

EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "pydoc_data"})
MAX_FILE_BYTES = 200_000  # larger stdlib files are generated tables, not code people write


def documents() -> Iterator[Document]:
    """Yield each standard-library ``.py`` file as a document, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if EXCLUDED_PARTS.intersection(relative.parts) or path.stat().st_size > MAX_FILE_BYTES:
            continue
        yield Document(f"stdlib/{relative.as_posix()}", path.read_text("utf-8", errors="replace"))
