"""Shards written atomically (temporary name, fsync, rename), in a background thread.

A shard file either exists whole under its final name or not at all, so after a kill the
shards present are exactly the finished ones and a resume redoes only the others. Next to each
shard, ``shard-NNNNNN.safetensors.sum`` records its size and SHA-256 at write time; a resume
checks every finished shard against it and harvests a damaged one (or one without a record)
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from crossdiff.store.format import SHARD_DIR, SHARD_SUFFIX, shard_path

_TMP_MARK = ".tmp-"
SUM_SUFFIX = ".sum"


def write_shard(
    store: str | Path, index: int, tensors: Mapping[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write shard ``index`` of ``store`` atomically; ``metadata`` is saved as JSON inside it."""
    from crossdiff.stages import atomic_write_json, named_write_errors

    final = shard_path(store, index)
    tmp = final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}")
    try:
        with named_write_errors(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb", buffering=0) as handle:
                hashing = _HashingFile(handle)
                write_safetensors(hashing, tensors, {"crossdiff": json.dumps(metadata)})
                os.fsync(handle.fileno())
            os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_json(sum_path(final), {"size": hashing.size, "sha256": hashing.digest.hexdigest()})
    return final


class _HashingFile:
    """A binary file that hashes what is written through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: memoryview) -> int:
        written = self.handle.write(data) or 0
        self.digest.update(data[:written])
        self.size += written
        return written


def sum_path(shard: Path) -> Path:
    """The size-and-checksum record of a shard, written after it."""
    return shard.with_name(shard.name + SUM_SUFFIX)


def shard_record(shard: Path) -> dict[str, Any] | None:
    """The size and SHA-256 recorded when ``shard`` was written, or None."""
    from crossdiff.errors import DamagedFileError
    from crossdiff.stages import read_json_file

    try:
        return read_json_file(sum_path(shard), "shard checksum")
    except DamagedFileError:
        return None


def shard_problem(shard: Path) -> str | None:
    """Why a finished shard cannot be trusted (no record, other size, other checksum), or None."""
    record = shard_record(shard)
    if record is None:
        return "no size and checksum recorded"
    size = shard.stat().st_size
    if size != record.get("size"):
        return f"{size} bytes, {record.get('size')} when written"
    digest = hashlib.sha256()
    with open(shard, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != record.get("sha256"):
        return "checksum differs from the one recorded when written"
    return None


_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
}


def write_safetensors(
    handle: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write ``tensors`` to an unbuffered binary file in the safetensors layout.

    The layout: an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
    byte offsets; ``__metadata__``) padded to 8 bytes, then the raw little-endian tensor bytes.
    Written here rather than with ``safetensors.save_file`` so the bytes go straight from each
    tensor's memory to the file, with the GIL released during the copies: the harvesting
    thread's forward passes keep running while a shard is written.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    buffers, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()  # [bytes], no copy
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + raw.nbytes],
        }
        buffers.append(raw)
        offset += raw.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    for chunk in (struct.pack("<Q", len(text)), text, *buffers):
        view = memoryview(chunk).cast("B")
        while view:
            view = view[handle.write(view) :]


def read_shard_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata saved inside a shard (row count, norm sums, sequence range)."""
    from safetensors import safe_open

    from crossdiff.store.format import damaged_shard

    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads(handle.metadata()["crossdiff"])
    except Exception as error:  # safetensors raises its own error type
        raise damaged_shard(path, error) from error


def finished_shards(store: str | Path) -> set[int]:
    """Indices of the shards fully written to ``store``."""
    directory = Path(store) / SHARD_DIR
    if not directory.is_dir():
        return set()
    return {
        int(p.name[len("shard-") : -len(SHARD_SUFFIX)])
        for p in directory.glob(f"shard-*{SHARD_SUFFIX}")
    }


def remove_partial_shards(store: str | Path) -> int:
    """Delete temporary files a killed harvest left behind; returns how many."""
    directory = Path(store) / SHARD_DIR
    removed = 0
    patterns = (f".shard-*{_TMP_MARK}*", f".shard-*{SUM_SUFFIX}.*.tmp")
    for pattern in patterns if directory.is_dir() else ():
        for tmp in directory.glob(pattern):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


class BackgroundWriter:
    """Writes shards in a thread so disk I/O overlaps the next forward passes.

    At most ``depth`` shards wait in memory; an error in the thread is raised by the next
    :meth:`submit` or by :meth:`close`, which always waits for the shards already submitted.
    """

    def __init__(self, store: str | Path, depth: int = 1) -> None:
        self.store = Path(store)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="crossdiff-shard-writer")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is None:
                try:
                    write_shard(self.store, *job)
                except BaseException as error:  # re-raised in the harvesting thread
                    self._error = error

    def submit(
        self, index: int, tensors: Mapping[str, torch.Tensor], metadata: dict[str, Any]
    ) -> None:
        """Queue shard ``index`` for writing (blocks while ``depth`` shards are waiting)."""
        self._raise_pending()
        self._queue.put((index, tensors, metadata))

    def close(self) -> None:
        """Write every queued shard, stop the thread, and raise any write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
