"""Verified reads: every file a stage records is checked against the checksum taken when it
was written, before anything reads it.

A stage records ``{"size": bytes, "sha256": hex}`` for each file it writes (shards in the
store's manifest, weights in the models' and the crosscoder's manifests, see
:func:`file_records`); :func:`verify_file` hashes the file again and raises a one-line
:class:`~crossdiff.errors.DamagedFileError` naming it and how to regenerate it when the bytes
differ. A file is hashed once per process while it is unchanged on disk: its identity (size,
modification and change times, inode) is remembered with the digest it matched, and any write
to the file changes its change time (which no user call can set back), so a later read of the
same, untouched file is not hashed again (a file changed in the last 0.1 s is always hashed).
SHA-256 hashes far faster than a harvest writes (docs/pipeline.md, ``benchmarks/bench_verify.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from crossdiff.errors import DamagedFileError

BLOCK = 1 << 22
"""Bytes hashed per read (4 MiB)."""
FILES_FIELD = "files"
"""The manifest field holding ``{path relative to the stage: record}``."""

_verified: dict[tuple[str, int, int, int, int], str] = {}
"""File identity -> the digest it matched in this process (a cache, not a result)."""


def file_digest(path: str | Path) -> str:
    """The SHA-256 of ``path``'s bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of ``path`` as it is now (what a stage records after writing it)."""
    path = Path(path)
    record = {"size": path.stat().st_size, "sha256": file_digest(path)}
    _remember(path, record["sha256"])
    return record


def file_records(stage_dir: str | Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """:func:`file_record` of each of ``names`` (paths relative to ``stage_dir``)."""
    return {name: file_record(Path(stage_dir) / name) for name in names}


def _identity(path: Path) -> tuple[str, int, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


FRESH_NS = 100_000_000
"""A file changed less than this long ago (0.1 s) is not remembered as verified: file times
advance in clock ticks, so a second write within the same tick could leave them unchanged."""


def _remember(path: Path, digest: str) -> None:
    identity = _identity(path)
    if time.time_ns() - identity[3] > FRESH_NS:
        _verified[identity] = digest


def verify_file(path: str | Path, record: Mapping[str, Any] | None, regenerate: str) -> None:
    """Raise :class:`DamagedFileError` unless ``path`` has the size and SHA-256 of ``record``
    (what was recorded when it was written); ``regenerate`` says how to make it again. A file
    with no record (written by an older crossdiff) is accepted as it is."""
    path = Path(path)
    if not path.is_file():
        raise damaged_file(path, "missing", regenerate)
    if not record:
        return
    size = path.stat().st_size
    if record.get("size") is not None and size != record["size"]:
        raise damaged_file(path, f"{size} bytes, {record['size']} when written", regenerate)
    expected = record.get("sha256")
    if expected is None or _verified.get(_identity(path)) == expected:
        return
    if file_digest(path) != expected:
        raise damaged_file(path, "its checksum differs from the one recorded when written",
                           regenerate)  # fmt: skip
    _remember(path, expected)


def damaged_file(path: Path, why: str, regenerate: str) -> DamagedFileError:
    """The one-line error for a file whose bytes are not the ones written."""
    return DamagedFileError(f"{str(path)!r} is damaged ({why}); {regenerate}")


def verify_stage_files(
    stage_dir: str | Path, manifest: Mapping[str, Any] | None, regenerate: str | None = None
) -> None:
    """Verify every file the stage's ``manifest`` records (its ``files`` field)."""
    if not manifest:
        return
    stage_dir = Path(stage_dir)
    how = regenerate or regenerate_hint(manifest.get("stage"), stage_dir)
    for name, record in (manifest.get(FILES_FIELD) or {}).items():
        verify_file(stage_dir / name, record, how)


REGENERATE = {
    "models": "restore it, or train the model again: `crossdiff train-model ... --out {dir} "
    "--overwrite` (in a run: delete {dir} and rerun `crossdiff run`)",
    "crosscoder": "restore it, or train the crosscoder again: `crossdiff train-crosscoder ... "
    "--out {dir} --overwrite` (in a run: delete {dir} and rerun `crossdiff run`)",
    "corpus": "restore it, or build the corpus again: `crossdiff corpus build --out {dir} "
    "--overwrite` (in a run: delete {dir} and rerun `crossdiff run`)",
}


def regenerate_hint(stage: Any, stage_dir: Path) -> str:
    """How to make a stage's files again, for its error messages."""
    text = REGENERATE.get(
        str(stage), "restore it, or delete {dir} and rerun the command that wrote it"
    )
    return text.format(dir=str(stage_dir))


def json_checksum(data: Mapping[str, Any]) -> str:
    """The SHA-256 of JSON-able ``data`` in a canonical form (sorted keys, no spaces): what a
    manifest records of itself, in its ``checksum`` field, without that field."""
    import json

    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def forget_verified() -> None:
    """Forget which files were verified in this process (tests; a long-lived process)."""
    _verified.clear()


__all__ = [
    "damaged_file",
    "file_digest",
    "file_record",
    "file_records",
    "forget_verified",
    "json_checksum",
    "regenerate_hint",
    "verify_file",
    "verify_stage_files",
]
