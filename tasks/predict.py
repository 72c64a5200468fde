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
import pyarrow as pa

from kerasflow.errors import ExpectedError
from kerasflow.model_interface import ModelInputError, ModelInputs
from kerasflow.sources import IMAGE_SUFFIXES
from kerasflow.tables import iter_frames
from kerasflow.tables import writer as parquet_writer


class InputFileError(ExpectedError, ValueError):
    """The input cannot be read as rows the model takes; the message names the file and says why."""


class DriftError(ExpectedError, RuntimeError):
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
            yield from iter_frames(path, batch_rows)
        elif suffix in (".csv", ".txt"):
            start = 0
            for frame in pd.read_csv(path, chunksize=batch_rows):
                frame.index = pd.RangeIndex(start, start + len(frame))
                yield start, frame
                start += len(frame)
        else:
            raise InputFileError(f"{path}: unsupported file type {suffix!r}; expected .csv, .parquet, .npy or a folder")
    except InputFileError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pa.ArrowException) as error:
        if type(error).__name__ == "ModelInputError":
            raise
        raise InputFileError(f"{path}: could not be read as {suffix.lstrip('.') or 'a folder'}: {error}") from error


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder`, sorted by path: the rows of an image folder, in their order."""
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputFileError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def _image_folder(folder: Path, batch_rows: int, inputs: ModelInputs) -> Iterator[tuple[int, np.ndarray]]:
    """Every image under `folder` (sorted by path), decoded and resized to the model's input shape by tf.data, in
    parallel; a file that cannot be decoded is named."""
    import tensorflow as tf

    from tasks.images import decode_files

    files = image_files(folder)
    for start in range(0, len(files), batch_rows):
        chunk = [str(file) for file in files[start : start + batch_rows]]
        try:
            yield start, np.concatenate(list(decode_files(chunk, inputs.shape, batch=len(chunk))))
        except tf.errors.InvalidArgumentError:
            raise InputFileError(broken_image(chunk, inputs.shape[-1])) from None


def broken_image(paths: list[str], channels: int) -> str:
    """Which of `paths` TensorFlow cannot decode, and why (found one by one, once a batch of them failed)."""
    from tasks.ingest import DataSourceError, check_image

    for path in paths:
        try:
            check_image(Path(path), channels)
        except DataSourceError as error:
            return str(error)
    return f"one of {paths[0]} ... {paths[-1]} could not be decoded"


def identity(source: Path, start: int, batch: Any, keep_columns: list[str], files: list[Path] | None) -> pd.DataFrame:
    """What joins each prediction back to its record: an image's path, or the row number in the file and the
    columns `predict.keep_columns` names (an id, a timestamp)."""
    if files is not None:
        return pd.DataFrame({"path": [str(path) for path in files[start : start + len(batch)]]})
    frame = pd.DataFrame({"row": np.arange(start, start + len(batch))})
    if keep_columns:
        missing = [name for name in keep_columns if not isinstance(batch, pd.DataFrame) or name not in batch.columns]
        if missing:
            raise InputFileError(f"{source}: predict.keep_columns names {missing}, which the file does not have")
        for name in keep_columns:
            frame[kept_name(name)] = batch[name].to_numpy()
    return frame


def kept_name(column: str) -> str:
    """A kept input column's name in the output: `input_<name>` when the output has a column of that name itself
    (row, path, prediction, label, probability_<class>), so neither replaces the other."""
    reserved = str(column) in ("row", "path", "prediction", "label") or str(column).startswith("probability_")
    return f"input_{column}" if reserved else column


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

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = parquet_writer(self.temporary, table.schema)
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


def read_ahead(batches: Iterator[Any], convert: Any = None) -> Iterator[Any]:
    """`batches`, each passed through `convert`, with the next one read and converted in a thread while the current
    one is scored (reading Parquet and CSV, and much of the conversion, release the GIL). At most two batches
    are in memory."""
    from concurrent.futures import ThreadPoolExecutor

    done = object()

    def following() -> Any:
        item = next(batches, done)
        return item if item is done or convert is None else convert(item)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasflow-read") as reader:
        upcoming = reader.submit(following)
        while (item := upcoming.result()) is not done:
            upcoming = reader.submit(following)
            yield item


def predict_batch(scorer: Any, batch: Any) -> pd.DataFrame:
    """The model's predictions for one batch; raw input it cannot read is a ModelInputError naming column and row."""
    from kerasflow.tracking import rejected_input

    try:
        return scorer.predict(None, batch)
    except Exception as error:
        message = rejected_input(error)
        if message is None:
            raise
        raise ModelInputError(message) from None


def score_file(
    input_path: Path,
    output_path: Path,
    scorer: Any,
    identity_columns: dict[str, str],
    batch_rows: int,
    drift: Any = None,
    keep_columns: list[str] | None = None,
) -> OutputWriter:
    """Score `input_path` batch by batch with `scorer` (the model's pyfunc implementation) into a temporary
    file beside `output_path`; return its writer, for the caller to `commit` (or `abort`).

    Three steps overlap: the next batch is read and turned into model inputs (by the model's own copy of the
    raw-input function) in a thread, the current one is scored, and the one before is written and counted for
    drift in another; a batch's rows keep their number in the file, so an error names the row.
    Each prediction row starts with what joins it back to its record (the row number and `keep_columns`, or
    the image's path) and ends with `identity_columns` (the model's name and version); `drift` (a
    DriftCounter) counts each batch.
    """
    writer = OutputWriter(output_path)
    files = image_files(input_path) if input_path.is_dir() else None
    interface = getattr(scorer, "interface", None)
    split = interface is not None and hasattr(scorer, "outputs")

    def convert(item: tuple[int, Any]) -> tuple[int, Any, Any]:
        first, batch = item
        if not len(batch) or not split:
            return first, batch, None
        return first, batch, to_inputs(interface, batch, scorer.config.inputs)

    def finish(first: int, batch: Any, outputs: Any) -> None:
        """A scored batch into the output (and the drift counts), in a thread while the next one is scored."""
        if split:
            predictions = interface.prediction_frame(outputs, scorer.config)
        else:  # a model logged before its wrapper had `outputs`
            predictions = predict_batch(scorer, batch)
        predictions = pd.concat([identity(input_path, first, batch, keep_columns or [], files), predictions], axis=1)
        for name, value in identity_columns.items():
            # One value on every row: categorical, so Parquet stores it once per batch.
            predictions[name] = pd.Categorical.from_codes(np.zeros(len(predictions), dtype=np.int8), [value])
        writer.write(predictions)
        if drift is not None:
            drift.add(batch)

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasflow-write") as behind:
            pending = None
            for first, batch, features in read_ahead(
                read_batches(input_path, batch_rows, scorer.config.inputs), convert
            ):
                if not len(batch):
                    continue  # a header-only CSV's one empty chunk
                outputs = scorer.outputs(features) if split else None
                if pending is not None:
                    pending.result()  # one batch in writing at a time (and its error, if any, raised here)
                pending = behind.submit(finish, first, batch, outputs)
            if pending is not None:
                pending.result()
        if writer.rows == 0:
            raise InputFileError(f"{input_path}: no rows to score (the file is empty, or only a header)")
    except BaseException:
        writer.abort()
        raise
    return writer


def to_inputs(interface: Any, batch: Any, inputs: Any) -> Any:
    """The model's inputs from a raw batch, by the model's own interface; its bad-input error as kerasflow's."""
    try:
        return interface.to_model_inputs(batch, inputs)
    except interface.ModelInputError as error:
        raise ModelInputError(str(error)) from None
