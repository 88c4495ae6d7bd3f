"""Stage directories: atomic writes and manifests that let a rerun skip finished work.

Every stage of a run owns one directory with a ``manifest.json`` written last, so a stage whose
manifest says ``complete`` with the same config is finished. A stage directory holding work done
with other settings is never resumed or mixed: :func:`prepare_stage` refuses it, naming the
settings that differ, unless the caller overwrites (``--overwrite``). One process at a time
writes a stage directory (:func:`stage_lock`, an OS file lock the kernel releases on a crash).
References from a stage to other files (:func:`reference`) are written relative to the stage
when they point inside the run, so a copied or moved run reads its own files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossdiff import __version__
from crossdiff.errors import (
    DamagedFileError,
    SettingsChangedError,
    StageError,
    StageLockedError,
)

MANIFEST = "manifest.json"
OVERWRITE_HINT = "rerun with --overwrite (overwrite=True) to replace it"
_WRITE_ERRNOS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
}


@contextlib.contextmanager
def named_write_errors(path: str | Path) -> Iterator[None]:
    """Turn a read-only, permission or full-disk ``OSError`` while writing ``path`` into a
    one-line :class:`StageError` naming the path."""
    try:
        yield
    except OSError as error:
        reason = _WRITE_ERRNOS.get(error.errno or 0)
        if reason is None:
            raise
        raise StageError(
            f"cannot write {str(path)!r}: {reason} ({error.strerror}); make it writable or free "
            "space, then rerun (finished steps are kept)"
        ) from error


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    with named_write_errors(path):
        _write_text(path, text)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 is for the temporary name only
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(
    path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` to the safetensors file ``path`` through a temporary name and a rename
    (never half-written), with the mode a plain write gets under the umask (safetensors' own
    writer leaves 0600)."""
    from safetensors.torch import save_file

    path = Path(path)
    with named_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.chmod(tmp, 0o666 & ~current_umask())
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
    with named_write_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o777 & ~current_umask())  # as ``mkdir`` would make it, not mkdtemp's 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def read_json_file(path: str | Path, what: str = "manifest") -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if there is no such file.

    A file that exists but is not a JSON object raises :class:`DamagedFileError` naming it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFileError(
            f"{what} {str(path)!r} is damaged (not valid JSON: {error}); delete its directory "
            f"or {OVERWRITE_HINT}"
        ) from error
    except OSError as error:
        raise DamagedFileError(f"cannot read {what} {str(path)!r}: {error.strerror}") from error
    if not isinstance(data, dict):
        raise DamagedFileError(
            f"{what} {str(path)!r} is damaged (a JSON {type(data).__name__}, not an object); "
            f"delete its directory or {OVERWRITE_HINT}"
        )
    return data


CHECKSUM = "checksum"
"""The manifest field holding the SHA-256 of the rest of the manifest, taken when written."""


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    """The stage's manifest, or None if it has none; a damaged one (not a JSON object, or
    whose content differs from the checksum it recorded when written) raises, naming the file.
    The returned manifest holds no ``checksum`` field."""
    from crossdiff.verify import json_checksum

    path = Path(stage_dir) / MANIFEST
    manifest = read_json_file(path)
    if manifest is None or CHECKSUM not in manifest:  # none, or written before checksums
        return manifest
    recorded = manifest.pop(CHECKSUM)
    if json_checksum(manifest) != recorded:
        raise DamagedFileError(
            f"manifest {str(path)!r} is damaged (its content differs from the checksum it "
            f"recorded when written); delete its directory or {OVERWRITE_HINT}"
        )
    return manifest


def write_manifest(
    stage_dir: str | Path, stage: str, config: dict[str, Any], **fields: Any
) -> None:
    """Write the stage manifest (config, crossdiff version, results) with a checksum of its
    content, atomically."""
    from crossdiff.verify import json_checksum

    fields.pop(CHECKSUM, None)
    manifest = {"stage": stage, "crossdiff_version": __version__, "config": config, **fields}
    manifest = json.loads(json.dumps(manifest))  # as it will read back (tuples as lists, ...)
    atomic_write_json(Path(stage_dir) / MANIFEST, {**manifest, CHECKSUM: json_checksum(manifest)})


def is_complete(stage_dir: str | Path, config: dict[str, Any]) -> bool:
    """True if the stage finished with exactly this config."""
    manifest = read_manifest(stage_dir)
    return bool(manifest and manifest.get("complete") and manifest.get("config") == config)


# ---------------------------------------------------------------- resume and overwrite


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested settings dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        names: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            names += settings_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return names
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def describe_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``steps: 20 -> 10, lr: 0.001 -> 0.005`` for the first ``limit`` differing settings."""
    names = settings_diff(old, new)
    parts = [f"{name}: {_at(old, name)!r} -> {_at(new, name)!r}" for name in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(parts) + more


def _at(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def clear_stage(stage_dir: str | Path) -> None:
    """Delete everything inside ``stage_dir`` (the directory itself stays)."""
    stage_dir = Path(stage_dir)
    with named_write_errors(stage_dir):
        for entry in stage_dir.iterdir() if stage_dir.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def prepare_stage(
    stage_dir: str | Path, stage: str, settings: dict[str, Any], overwrite: bool = False
) -> dict[str, Any] | None:
    """The manifest of ``stage_dir`` if it holds ``stage`` work with exactly ``settings``.

    Returns None for a new or empty directory (or one just cleared by ``overwrite``). Work done
    with other settings, a damaged manifest, another stage's output or unrelated files raise a
    one-line error naming what differs and the ``--overwrite`` flag, leaving everything as it
    was; with ``overwrite`` the directory is emptied instead.
    """
    stage_dir = Path(stage_dir)
    try:
        manifest = read_manifest(stage_dir)
    except DamagedFileError:
        if not overwrite:
            raise
        clear_stage(stage_dir)
        return None
    if manifest is None:
        if stage_dir.is_dir() and any(stage_dir.iterdir()):
            if overwrite:
                clear_stage(stage_dir)
                return None
            raise SettingsChangedError(
                f"{str(stage_dir)!r} is not empty and holds no {stage} manifest.json; choose a "
                f"new directory or {OVERWRITE_HINT} (nothing was changed)"
            )
        return None
    if manifest.get("stage") != stage:
        raise SettingsChangedError(
            f"{str(stage_dir)!r} holds a {manifest.get('stage')!r} stage, not {stage!r}: "
            "choose another directory (nothing was changed)"
        )
    if manifest.get("config") != settings:
        if overwrite:
            clear_stage(stage_dir)
            return None
        raise SettingsChangedError(
            f"{str(stage_dir)!r} holds {stage} work done with other settings "
            f"({describe_diff(manifest.get('config') or {}, settings)}); rerun with the same "
            f"settings to resume it, write elsewhere, or {OVERWRITE_HINT} (nothing was changed)"
        )
    return manifest


def require_stage(stage_dir: str | Path, stage: str, command: str) -> dict[str, Any]:
    """The complete manifest of ``stage`` in ``stage_dir``, or an error naming ``command``."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.get("stage") != stage:
        raise StageError(
            f"no {stage} stage at {str(stage_dir)!r} (no {stage} manifest.json): run "
            f"`{command}` first, or check the path"
        )
    if not manifest.get("complete"):
        raise StageError(
            f"the {stage} stage at {str(stage_dir)!r} is unfinished: rerun `{command}` to finish it"
        )
    from crossdiff.verify import verify_stage_files

    verify_stage_files(stage_dir, manifest)
    return manifest


@contextlib.contextmanager
def named_checkpoint_errors(checkpoint: str | Path, loaders: tuple[str, ...]) -> Iterator[None]:
    """Turn an unexpected error raised inside one of the functions named ``loaders`` (the
    checkpoint readers) into a :class:`DamagedFileError` naming ``checkpoint``."""
    from crossdiff.errors import CrossdiffError

    try:
        yield
    except CrossdiffError:
        raise
    except Exception as error:
        frames, tb = set(), error.__traceback__
        while tb is not None:
            frames.add(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        if not frames & set(loaders):
            raise
        raise DamagedFileError(
            f"the checkpoint at {str(checkpoint)!r} is damaged ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'}); "
            f"{OVERWRITE_HINT} from scratch"
        ) from error


def fingerprint(data: Any) -> str:
    """A short hash of JSON-able ``data`` (key order does not matter)."""
    import hashlib

    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- one writer per stage


def lock_path(stage_dir: str | Path) -> Path:
    """The lock file of ``stage_dir``: ``.<name>.lock`` next to it (so it survives a clear)."""
    stage_dir = Path(stage_dir)
    return stage_dir.parent / f".{stage_dir.name}.lock"


@contextlib.contextmanager
def stage_lock(stage_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``stage_dir`` while the block writes it.

    A second process gets :class:`StageLockedError` naming the holder's pid and start time at
    once (no waiting). The kernel drops the lock when the holder exits, even on a crash.
    """
    import fcntl

    stage_dir = Path(stage_dir)
    path = lock_path(stage_dir)
    with named_write_errors(path):
        stage_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for a plain write
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise StageLockedError(
                f"{str(stage_dir)!r} is being written by another crossdiff process ({holder}); "
                "wait for it to finish or write elsewhere"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_main_process() -> bool:
    """False on the non-zero ranks of a ``torchrun`` job (only rank 0 locks and writes)."""
    return os.environ.get("RANK", "0") == "0"


# ---------------------------------------------------------------- references to other files


def reference(target: str | Path, stage_dir: str | Path, run_dir: str | Path | None) -> str:
    """How a stage records a reference to ``target`` (a path or a hub name).

    Inside ``run_dir``: relative to the stage directory, starting with ``./`` or ``../``, so a
    copied or moved run reads its own files. An existing path outside it: absolute. Anything
    else (a hub name) as given.
    """
    path = Path(target)
    if not path.exists():
        return str(target)
    resolved = path.resolve()
    if run_dir is not None and resolved.is_relative_to(Path(run_dir).resolve()):
        relative = os.path.relpath(resolved, Path(stage_dir).resolve())
        return relative if relative.startswith("..") else f"./{relative}"
    return str(resolved)


def resolve_reference(value: str, stage_dir: str | Path, what: str) -> str:
    """The path (or hub name) a reference written by :func:`reference` points to, checked.

    A relative reference is resolved against ``stage_dir``; a path that does not exist raises
    :class:`DamagedFileError` naming it and the stage that recorded it.
    """
    if value.startswith(("./", "../")):
        path = Path(stage_dir) / value
    elif os.path.isabs(value):
        path = Path(value)
    else:
        return value
    if not path.exists():
        raise DamagedFileError(
            f"{what} {value!r}, recorded by {str(Path(stage_dir) / MANIFEST)!r}, is missing "
            f"(looked at {str(path)!r}): restore it or redo that stage with --overwrite"
        )
    return str(path)
