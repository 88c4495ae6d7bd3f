"""Stage directories: atomic writes and manifests that let a rerun skip finished work.

Every stage of a run owns one directory with a ``manifest.json`` written last, so a stage whose
manifest says ``complete`` with the same config is finished, and anything else is redone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossdiff import __version__

MANIFEST = "manifest.json"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    """The stage's manifest, or None if it has none (or an unreadable one)."""
    path = Path(stage_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(
    stage_dir: str | Path, stage: str, config: dict[str, Any], **fields: Any
) -> None:
    """Write the stage manifest (config, crossdiff version, results), atomically."""
    manifest = {"stage": stage, "crossdiff_version": __version__, "config": config, **fields}
    atomic_write_json(Path(stage_dir) / MANIFEST, manifest)


def is_complete(stage_dir: str | Path, config: dict[str, Any]) -> bool:
    """True if the stage finished with exactly this config."""
    manifest = read_manifest(stage_dir)
    return bool(manifest and manifest.get("complete") and manifest.get("config") == config)
