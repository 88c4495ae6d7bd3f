"""The token alignments a store was harvested with, kept beside it so every later reader of the
store (the MoE analyses) feeds each model the same ids it was harvested on.

    <store>/alignments/<model>.npy    int64 [V_corpus] corpus token id -> the model's token id

The manifest's ``config.models.<model>.alignment`` names the file and its SHA-256, so a resume
with another alignment is refused like any other change of settings.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crossdiff.errors import StageError

ALIGNMENT_DIR = "alignments"


def _npy_bytes(alignment: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(alignment, dtype=np.int64), allow_pickle=False)
    return buffer.getvalue()


def alignment_record(alignment: np.ndarray, model: str) -> dict[str, str]:
    """``{"file": "alignments/<model>.npy", "sha256": ...}`` of ``alignment`` as saved."""
    digest = hashlib.sha256(_npy_bytes(alignment)).hexdigest()
    return {"file": f"{ALIGNMENT_DIR}/{model}.npy", "sha256": digest}


def save_alignments(store_dir: str | Path, alignments: Mapping[str, np.ndarray]) -> None:
    """Write each model's alignment into ``store_dir`` (atomically, one file per model)."""
    for model, alignment in alignments.items():
        path = Path(store_dir) / alignment_record(alignment, model)["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(_npy_bytes(alignment))
        temporary.replace(path)


def store_alignments(info) -> dict[str, np.ndarray]:
    """Model -> the alignment the store ``info`` (a StoreInfo) was harvested with, checked."""
    out: dict[str, np.ndarray] = {}
    for model, entry in info.manifest.get("config", {}).get("models", {}).items():
        record = entry.get("alignment")
        if record is None:
            continue
        path = Path(info.path) / record["file"]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise StageError(
                f"the store at {str(info.path)!r} was harvested with an alignment for model "
                f"{model!r} but {record['file']} cannot be read: {error}"
            ) from error
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise StageError(
                f"{str(path)!r} is not the alignment model {model!r} was harvested with "
                "(its SHA-256 differs from the manifest's)"
            )
        out[model] = np.load(io.BytesIO(data), allow_pickle=False)
    return out
