"""Batch scoring: a file of new rows in, predictions out, streamed batch by batch.

The input (CSV, Parquet, `.npy` images or a folder of images) is read a batch at a time, scored
by the model's own pyfunc code (the raw-input conversion training used, which names the column
and row of a value it cannot read), counted for drift against the training split, and appended
to the output under a temporary name. Only a file scored to its last row is renamed into place:
a failure, or drift with `fail_on_drift`, leaves nothing at the output path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.model_interface import ModelInputError, ModelInputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class InputFileError(ValueError):
    """The input cannot be read as rows the model takes; the message names the file and says why."""


class DriftError(RuntimeError):
    """New data drifted past the thresholds and `predict.fail_on_drift` refused to write predictions."""


def default_output(input_path: Path) -> Path:
    """`houses.csv` → `houses.predictions.csv`; a Parquet input gives Parquet; images give CSV."""
    suffix = input_path.suffix.lower() if input_path.suffix.lower() in (".csv", ".parquet") else ".csv"
    return input_path.with_name(f"{input_path.stem}.predictions{suffix}")


def read_batches(path: Path, batch_rows: int, inputs: ModelInputs) -> Iterator[tuple[int, Any]]:
    """(first row number, batch) pairs: DataFrames of raw columns, or image arrays for an image model."""
    if not path.exists():
        raise InputFileError(f"{path}: not found")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            yield from _image_folder(path, batch_rows, inputs)
        elif suffix == ".npy":
            images = np.load(path, mmap_mode="r", allow_pickle=False)
            for start in range(0, len(images), batch_rows):
                yield start, np.asarray(images[start : start + batch_rows])
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            start = 0
            # Without pre-buffering, pyarrow holds one batch's columns at a time, not whole row groups.
            reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 22)
            for batch in reader.iter_batches(batch_size=batch_rows):
                yield start, batch.to_pandas()
                start += batch.num_rows
        elif suffix in (".csv", ".txt"):
            start = 0
            for frame in pd.read_csv(path, chunksize=batch_rows):
                yield start, frame
                start += len(frame)
        else:
            raise InputFileError(f"{path}: unsupported file type {suffix!r}; expected .csv, .parquet, .npy or a folder")
    except InputFileError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        if type(error).__name__ == "ModelInputError":
            raise
        raise InputFileError(f"{path}: could not be read as {suffix.lstrip('.') or 'a folder'}: {error}") from error


def _image_folder(folder: Path, batch_rows: int, inputs: ModelInputs) -> Iterator[tuple[int, np.ndarray]]:
    """Every image under `folder` (sorted by path), decoded and resized to the model's input shape."""
    import keras

    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputFileError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    height, width, channels = inputs.shape
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[channels]
    for start in range(0, len(files), batch_rows):
        images = [
            keras.utils.img_to_array(keras.utils.load_img(file, color_mode=mode, target_size=(height, width)))
            for file in files[start : start + batch_rows]
        ]
        yield start, np.stack(images)


class OutputWriter:
    """Predictions appended to a temporary file beside `path` (CSV or Parquet by its suffix); `commit` renames it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix.lower() not in (".csv", ".parquet"):
            raise InputFileError(f"{path}: the output must be a .csv or .parquet file")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        self.temporary = Path(name)
        self.parquet = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.path.suffix.lower() == ".csv":
            frame.to_csv(self.temporary, mode="a", header=self.rows == 0, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.temporary, table.schema)
            self.parquet.write_table(table)
        self.rows += len(frame)

    def commit(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.temporary.unlink(missing_ok=True)


def read_ahead(batches: Iterator[Any]) -> Iterator[Any]:
    """`batches`, with the next one read in a thread while the current one is scored (reading Parquet and CSV
    releases the GIL, so the file is read while the model predicts). At most two batches are in memory."""
    from concurrent.futures import ThreadPoolExecutor

    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasflow-read") as reader:
        upcoming = reader.submit(next, batches, done)
        while (item := upcoming.result()) is not done:
            upcoming = reader.submit(next, batches, done)
            yield item


def predict_batch(scorer: Any, batch: Any) -> pd.DataFrame:
    """The model's predictions for one batch; raw input it cannot read is a ModelInputError naming column and row."""
    from mlflow.exceptions import MlflowException

    try:
        return scorer.predict(None, batch)
    except MlflowException as error:
        if error.error_code == "INVALID_PARAMETER_VALUE":
            raise ModelInputError(error.message) from None
        raise


def score_file(
    input_path: Path,
    output_path: Path,
    scorer: Any,
    identity: dict[str, str],
    batch_rows: int,
    drift: Any = None,
) -> OutputWriter:
    """Score `input_path` batch by batch with `scorer` (the model's pyfunc implementation) into a temporary
    file beside `output_path`; return its writer, for the caller to `commit` (or `abort`).

    Each batch's rows keep their number in the file, so an error names the row; `identity` (the
    model's name and version) is added to every row; `drift` (a DriftCounter) counts each batch.
    """
    writer = OutputWriter(output_path)
    try:
        for first, batch in read_ahead(read_batches(input_path, batch_rows, scorer.config.inputs)):
            if isinstance(batch, pd.DataFrame):
                batch.index = pd.RangeIndex(first, first + len(batch))
            predictions = predict_batch(scorer, batch)
            for name, value in identity.items():
                # One value on every row: categorical, so Parquet stores it once per batch.
                predictions[name] = pd.Categorical([value] * len(predictions))
            writer.write(predictions)
            if drift is not None:
                drift.add(batch)
        if writer.rows == 0:
            raise InputFileError(f"{input_path}: no rows to score")
    except BaseException:
        writer.abort()
        raise
    return writer
