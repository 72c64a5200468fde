"""Parquet read and written a batch at a time: memory follows the batch, never the file.

`ParquetStream` writes record batches into row groups of a bounded size under a temporary name,
computing the file's md5 (the hash DVC records for it) as the bytes go out, and renames the file
into place only on `commit`: a failure leaves nothing at the path. `iter_frames` reads a file back
in batches, each with the position of its first row in the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class HashingFile(io.RawIOBase):
    """A write-only file that also feeds every byte written to an md5."""

    def __init__(self, path: Path) -> None:
        self.stream = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.digest = hashlib.md5()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        return self.stream.write(view)

    def flush(self) -> None:
        if not self.stream.closed:
            self.stream.flush()

    def close(self) -> None:
        if not self.stream.closed:
            self.stream.close()
        super().close()


class ParquetStream:
    """Record batches appended to a Parquet file in row groups of `row_group_rows`; `commit` renames it into
    place and returns its md5, `abort` removes it. Use as a context manager: an exception aborts."""

    def __init__(self, path: Path, row_group_rows: int, schema: pa.Schema | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".parquet", dir=self.path.parent)
        os.close(handle)
        self.temporary = Path(name)
        self.file = HashingFile(self.temporary)
        self.row_group_rows = row_group_rows
        self.schema = schema
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0
        self.md5 = ""

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is not None:
            self.abort()

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        batches = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for part in batches:
            if part.num_rows:
                self.pending.append(part)
                self.pending_rows += part.num_rows
        while self.pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending)
        group, rest = table.slice(0, rows), table.slice(rows)
        if self.writer is None:
            self.schema = self.schema or group.schema
            self.writer = writer(self.file, self.schema)
        self.writer.write_table(group.cast(self.schema), row_group_size=rows)
        self.rows += group.num_rows
        self.pending = rest.to_batches()
        self.pending_rows = rest.num_rows

    def commit(self) -> str:
        """Write what is left, close the file, rename it onto the path; return its md5."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is None:  # no rows at all: still a valid file, with the schema
            if self.schema is None:
                raise ValueError(f"{self.path}: nothing was written and no schema is known")
            self.writer = writer(self.file, self.schema)
        self.writer.close()
        self.file.close()
        self.md5 = self.file.digest.hexdigest()
        os.replace(self.temporary, self.path)
        return self.md5

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except (OSError, ValueError):
                pass
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def writer(where: Any, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer that dictionary-encodes all but floating-point columns (which rarely repeat, and whose
    dictionary attempt costs five times the rest of the writing)."""
    encoded = [field.name for field in schema if not pa.types.is_floating(field.type)]
    return pq.ParquetWriter(where, schema, use_dictionary=encoded)


def open_parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file for reading batch by batch (without pre-buffering, pyarrow holds one batch's columns)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 22)


def iter_batches(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(position of the first row, record batch) pairs over a Parquet file."""
    start = 0
    for batch in open_parquet(path).iter_batches(batch_size=batch_rows, columns=columns):
        yield start, batch
        start += batch.num_rows


def iter_frames(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """(position of the first row, DataFrame) pairs over a Parquet file; each frame's index is the rows'
    positions in the file, so an error can name the row."""
    import pandas as pd

    for start, batch in iter_batches(path, batch_rows, columns):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(start, start + len(frame))
        yield start, frame


def row_group_rows(path: Path) -> int:
    """The rows of the file's largest row group: the natural batch to read it in."""
    metadata = open_parquet(path).metadata
    return max([metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)] or [1]) or 1


def row_count(path: Path) -> int:
    return open_parquet(path).metadata.num_rows


def decoded_bytes(path: Path) -> int:
    """Roughly what the file's columns take once read into memory (the row groups' uncompressed size)."""
    metadata = open_parquet(path).metadata
    return sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
