"""Shards written atomically (temporary name, fsync, rename), in a background thread.

A shard file either exists whole under its final name or not at all, so after a kill the
shards present are exactly the finished ones and a resume redoes only the others.
"""

from __future__ import annotations

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


def write_shard(
    store: str | Path, index: int, tensors: Mapping[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write shard ``index`` of ``store`` atomically; ``metadata`` is saved as JSON inside it."""
    final = shard_path(store, index)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb", buffering=0) as handle:
            write_safetensors(handle, tensors, {"crossdiff": json.dumps(metadata)})
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


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

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["crossdiff"])


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
    for tmp in directory.glob(f".shard-*{_TMP_MARK}*") if directory.is_dir() else ():
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
