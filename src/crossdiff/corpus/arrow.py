"""Datasets written and read a batch at a time, so memory stays flat in the data's size.

:class:`SplitWriter` appends rows to one split of a ``DatasetDict`` directory in the layout of
``datasets``' ``save_to_disk`` (``load_from_disk`` opens it): the rows go through ``datasets``'
own ``ArrowWriter`` into the split's one Arrow file a batch at a time, and the split's metadata
files are those ``save_to_disk`` writes for an empty dataset of the same features, with a
fingerprint hashed from the content (equal builds save equal bytes). :func:`read_batches` reads
such a directory back a record batch at a time with plain file reads: a memory map would keep
every page it touched resident in the process until it is closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DATA_FILE = "data-00000-of-00001.arrow"
BATCH_ROWS = 1000
"""Rows buffered before they are written."""
BATCH_BYTES = 16 << 20
"""Bytes of text or tokens buffered before they are written, whatever the row count."""


class SplitWriter:
    """Rows of one split, appended in batches to ``directory`` (a split of a DatasetDict)."""

    def __init__(self, directory: str | Path, features: Any) -> None:
        from datasets.arrow_writer import ArrowWriter

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.features = features
        self.rows = 0
        self._digest = hashlib.sha256()
        self._columns: dict[str, list[Any]] = {name: [] for name in features}
        self._bytes = 0
        self._writer = ArrowWriter(features=features, path=str(self.directory / DATA_FILE))

    def add(self, row: dict[str, Any], nbytes: int) -> None:
        """Append one row (a value per feature); ``nbytes`` is its rough size in memory."""
        for name, column in self._columns.items():
            column.append(row[name])
        self._bytes += nbytes
        if len(self._columns[next(iter(self._columns))]) >= BATCH_ROWS or (
            self._bytes >= BATCH_BYTES
        ):
            self._flush()

    def write(self, table: Any) -> None:
        """Append a pyarrow table in the features' schema (e.g. a block of packed rows)."""
        for column in table.columns:
            for chunk in column.chunks:
                for buffer in chunk.buffers():
                    if buffer is not None:
                        self._digest.update(buffer)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._columns[next(iter(self._columns))]:
            return
        schema = self.features.arrow_schema
        self.write(pa.table(self.features.encode_batch(self._columns), schema=schema))
        self._columns = {name: [] for name in self._columns}
        self._bytes = 0

    def close(self) -> None:
        """Write what is buffered and the split's metadata files."""
        import datasets

        self._flush()
        self._writer.finalize()
        self._writer.close()
        empty = datasets.Dataset.from_dict(
            {name: [] for name in self.features}, features=self.features
        )
        empty._fingerprint = self._digest.hexdigest()[:16]
        scratch = self.directory.with_name(f".{self.directory.name}-metadata")
        with _quiet_datasets():
            empty.save_to_disk(str(scratch))
        state = json.loads((scratch / "state.json").read_text(encoding="utf-8"))
        state["_data_files"] = [{"filename": DATA_FILE}]
        with open(self.directory / "state.json", "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)  # as save_to_disk writes it
        (scratch / "dataset_info.json").replace(self.directory / "dataset_info.json")
        _remove_tree(scratch)


def write_dataset_dict(directory: str | Path, splits: Sequence[str]) -> None:
    """The ``dataset_dict.json`` that makes ``directory``'s split folders one DatasetDict."""
    path = Path(directory) / "dataset_dict.json"
    path.write_text(json.dumps({"splits": list(splits)}))


def read_batches(split_dir: str | Path, columns: Sequence[str]) -> Iterator[dict[str, list]]:
    """The rows of a saved split (``save_to_disk`` layout), as ``{column: values}`` batches,
    read from its Arrow files without memory-mapping them."""
    import pyarrow as pa

    split_dir = Path(split_dir)
    state = json.loads((split_dir / "state.json").read_text())
    for entry in state["_data_files"]:
        with pa.OSFile(str(split_dir / entry["filename"])) as handle:
            reader = pa.ipc.open_stream(handle)
            for batch in reader:
                yield {name: batch.column(name).to_pylist() for name in columns}


def saved_columns(split_dir: str | Path) -> list[str]:
    """The column names of a saved split, from its first Arrow file's schema."""
    import pyarrow as pa

    split_dir = Path(split_dir)
    state = json.loads((split_dir / "state.json").read_text())
    if not state["_data_files"]:
        return []
    with pa.OSFile(str(split_dir / state["_data_files"][0]["filename"])) as handle:
        return list(pa.ipc.open_stream(handle).schema.names)


def is_saved_dataset(path: str | Path) -> bool:
    """True if ``path`` is a directory written by ``save_to_disk`` (a Dataset or DatasetDict)."""
    path = Path(path)
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bar inside the block (the setting is restored after it)."""
    from datasets.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
