"""Ingest: stream the configured source into one Parquet file of bounded row groups, plus its description.

Every source is one entry of `kerasflow.sources.SOURCES`, whose loader (`open_<name>` here) reads it as
Arrow record batches. Files are converted a block at a time (`pyarrow.csv.open_csv`,
`pyarrow.dataset`), so memory follows `ingest.batch_rows`, never the file; the md5 (the hash DVC
records) is computed as the bytes are written, and the file appears only when the last row is in.
An image folder stays files: the raw dataset is each image's path (relative to the folder), label and
md5, and each image is decoded once here, so a broken one is named before any training.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kerasflow.config import IngestParams
from kerasflow.errors import ExpectedError
from kerasflow.io import write_json
from kerasflow.records import RawDatasetInfo
from kerasflow.sources import IMAGE_SUFFIXES, MAX_CLASSES, source_of, target_task
from kerasflow.tables import ParquetStream, iter_batches, row_count
from tasks.sampling import position_hashes, smallest_hashes

logger = logging.getLogger(__name__)

# Built-in datasets whose target is a class label; the rest are regressions.
CLASSIFICATION_DATASETS = {"digits", "breast_cancer", "iris", "wine", "mnist", "fashion_mnist", "imdb"}
IMAGE_SHAPES = {"digits": [8, 8, 1], "mnist": [28, 28, 1], "fashion_mnist": [28, 28, 1]}
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# The columns of an image folder's raw table.
IMAGE_PATH, IMAGE_MD5 = "path", "md5"
# A salt for the max_rows sample, so it is not the split's own order.
SAMPLE_SALT = 1


class DataSourceError(ExpectedError, RuntimeError):
    """The raw data could not be read or downloaded; `transient` when trying again may help."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class SourceData:
    """A source opened for reading: a way to stream its rows (callable again for a second pass), its target
    column, and what it says about itself."""

    batches: Callable[[], Iterator[pa.RecordBatch]]
    target: str
    schema: pa.Schema | None = None
    rows: int | None = None
    dataset: str | None = None
    image_shape: list[int] | None = None
    image_root: str | None = None
    text_column: str | None = None
    # A value that does not fit its column, found as rows are read (deep in a CSV): the error naming column
    # and row, or the source opened again with the column's type widened (whole numbers, then a decimal).
    describe_error: Callable[[Exception], DataSourceError | SourceData] | None = None


def _frame_source(frame: pd.DataFrame, params: IngestParams, **details: Any) -> SourceData:
    frame.columns = [str(column) for column in frame.columns]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return SourceData(
        lambda: iter(table.to_batches(max_chunksize=params.batch_rows)),
        rows=len(frame),
        schema=table.schema,
        **details,
    )


def open_sklearn(params: IngestParams) -> SourceData:
    from sklearn import datasets

    frame = getattr(datasets, f"load_{params.dataset}")(as_frame=True).frame.copy()
    return _frame_source(frame, params, target="target", dataset=params.dataset)


def _images_to_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    flat = images.reshape(len(images), -1)
    frame = pd.DataFrame(flat, columns=[f"pixel_{index}" for index in range(flat.shape[1])])
    frame["target"] = labels.astype("int64")
    return frame


def open_keras(params: IngestParams) -> SourceData:
    """Download (or read from ~/.keras/datasets) one of the keras.datasets sources."""
    import keras

    name = params.dataset
    loader = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # Keras raises URLError, OSError or a bare Exception when offline.
        raise DataSourceError(
            f"could not load keras.datasets.{name} (downloaded from {KERAS_ORIGIN} on first use, "
            f"then cached in ~/.keras/datasets): {error}. Check the network, or copy the file into "
            "the cache, or point ingest at a local file with source: file.",
            transient=True,
        ) from error
    labels = np.concatenate([y_train, y_test])
    if name == "imdb":
        # Reviews are word-id sequences of any length: joined as lists, never stacked as arrays.
        texts = [" ".join(str(token) for token in sequence) for sequence in [*x_train, *x_test]]
        frame = pd.DataFrame({"text": texts, "target": labels.astype("int64")})
        return _frame_source(frame, params, target="target", dataset=name, text_column="text")
    features = np.concatenate([x_train, x_test])
    if name == "boston_housing":
        columns = ["crim", "zn", "indus", "chas", "nox", "rm", "age", "dis", "rad", "tax", "ptratio", "b", "lstat"]
        frame = pd.DataFrame(features, columns=columns)
        frame["target"] = labels.astype("float64")
        return _frame_source(frame, params, target="target", dataset=name)
    return _frame_source(_images_to_frame(features, labels), params, target="target", dataset=name)


def open_file(params: IngestParams) -> SourceData:
    """A CSV file, a Parquet file, or a folder of Parquet files (a dataset), read a block at a time."""
    path = Path(params.path)
    if not path.exists():
        raise DataSourceError(f"{path}: file not found (ingest.path must name a .csv or .parquet file)")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".parquet":
        return _open_parquet(path, params)
    if suffix in (".csv", ".txt"):
        return _open_csv(path, params)
    raise DataSourceError(f"{path}: unsupported file type {path.suffix!r}; expected .csv or .parquet")


def _open_parquet(path: Path, params: IngestParams) -> SourceData:
    """A Parquet file, or a folder of them (read in name order, each a batch at a time: pyarrow's dataset scanner
    reads ahead by whole row groups, holding far more than a batch)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files = sorted(item for item in path.rglob("*.parquet") if item.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataSourceError(f"{path}: no Parquet files in the folder")
    try:
        schema = ds.dataset([str(file) for file in files], format="parquet").schema
        rows = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise DataSourceError(f"{path}: could not be read as parquet: {error}") from error

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for file in files:
                for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=params.batch_rows):
                    yield pa.Table.from_batches([batch]).select(schema.names).cast(schema).to_batches()[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise
        except (pa.ArrowException, OSError) as error:
            raise DataSourceError(f"{path}: could not be read as parquet: {error}") from error

    return SourceData(batches, target=params.target, schema=schema, rows=rows)


def _open_csv(path: Path, params: IngestParams, schema: pa.Schema | None = None) -> SourceData:
    """A CSV file a block at a time, every block converted to the column types of the first (`schema`)."""
    import pyarrow.csv as pv

    def reader(**convert: Any) -> Any:
        try:
            return pv.open_csv(
                path,
                read_options=pv.ReadOptions(block_size=1 << 22),
                parse_options=pv.ParseOptions(delimiter=params.delimiter),
                # As pandas reads it: an empty text cell is missing, not "" (and so is ingest.missing_values' text).
                convert_options=pv.ConvertOptions(
                    strings_can_be_null=True, null_values=missing_markers(params.missing_values), **convert
                ),
            )
        except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
            raise DataSourceError(f"{path}: could not be read as csv: {error}{delimiter_hint(path, params)}") from error

    if schema is None:
        schema = reader().schema
        if len(schema) and all(pa.types.is_null(field.type) for field in schema):
            # pyarrow types a column with no values as null: a header and nothing under it.
            raise DataSourceError(f"{path}: no rows under the header{delimiter_hint(path, params)}")
        # A column empty all through the first block is taken as numbers with gaps.
        schema = pa.schema(
            [field.with_type(pa.float64()) if pa.types.is_null(field.type) else field for field in schema]
        )

    def batches() -> Iterator[pa.RecordBatch]:
        yield from reader(column_types=schema)

    def describe(error: Exception) -> DataSourceError | SourceData:
        found = re.search(r"column #(\d+).*?: invalid value '(.*)'", str(error))
        if found:
            field = schema.field(int(found.group(1)))
            # Whole numbers in the first block and a decimal later: the column is decimal, as pandas would read it.
            if pa.types.is_integer(field.type) and is_number(found.group(2)):
                logger.info("column %r holds decimals after its first block: read as decimals", field.name)
                return _open_csv(
                    path, params, schema.set(schema.get_field_index(field.name), field.with_type(pa.float64()))
                )
        return csv_value_error(path, params, schema, error)

    return SourceData(batches, target=params.target, schema=schema, describe_error=describe)


def missing_markers(extra: list[str]) -> list[str]:
    """pyarrow's own text for a missing value (empty, NA, N/A, NaN, null, ...) and the user's."""
    import pyarrow.csv as pv

    return [*pv.ConvertOptions().null_values, *extra]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_value_error(path: Path, params: IngestParams, schema: pa.Schema, error: Exception) -> DataSourceError:
    """pyarrow names the column and the value of a CSV value that does not fit its column's type, not the row:
    find the row by reading that column alone as text, and name both."""
    import pyarrow.csv as pv

    found = re.search(r"column #(\d+).*?: invalid value '(.*)'", str(error))
    if not found:
        return DataSourceError(f"{path}: could not be read as csv: {error}")
    field = schema.field(int(found.group(1)))
    text_reader = pv.open_csv(
        path,
        read_options=pv.ReadOptions(block_size=1 << 22),
        parse_options=pv.ParseOptions(delimiter=params.delimiter),
        convert_options=pv.ConvertOptions(
            include_columns=[field.name],
            column_types={field.name: pa.string()},
            strings_can_be_null=True,
            null_values=missing_markers(params.missing_values),
        ),
    )
    numeric = pa.types.is_floating(field.type) or pa.types.is_integer(field.type)
    expected = "a number" if numeric else "true or false" if pa.types.is_boolean(field.type) else f"a {field.type}"
    for position, batch in enumerate_batches(text_reader):
        values = batch.column(0).to_pandas()
        present = values.notna() & (values.str.strip() != "")
        if numeric:
            broken = present & pd.to_numeric(values, errors="coerce").isna()
        else:
            broken = present & ~values.str.strip().str.lower().isin(["true", "false", "1", "0"])
        if broken.any():
            row = position + int(np.flatnonzero(broken.to_numpy())[0])
            value = values.iloc[row - position]
            return DataSourceError(
                f"{path}: column {field.name!r}, row {row} (line {row + 2} of the file): {value!r} is not {expected}, "
                "as the column's earlier values are; fix the value, or if it stands for a missing value, list it in "
                "ingest.missing_values (nothing was written)"
            )
    return DataSourceError(f"{path}: column {field.name!r}: {found.group(2)!r} is not {expected} ({error})")


def enumerate_batches(reader: Any) -> Iterator[tuple[int, pa.RecordBatch]]:
    position = 0
    for batch in reader:
        yield position, batch
        position += batch.num_rows


def delimiter_hint(path: Path, params: IngestParams) -> str:
    """`; it looks separated by ';': set ingest.delimiter` when the header splits better on another character."""
    try:
        with open(path, newline="", errors="replace") as stream:
            head = stream.read(8192)
        found = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except (OSError, csv.Error):
        return ""
    if found == params.delimiter:
        return ""
    shown = "\\t" if found == "\t" else found
    return f"; it looks separated by {shown!r}: set ingest.delimiter: {shown!r}"


def open_image_folder(params: IngestParams) -> SourceData:
    """One sub-folder of images per class: each file's relative path, its class and md5, each image decoded once
    (so a broken one is named here), a batch of files at a time."""
    folder = Path(params.path)
    if not folder.is_dir():
        raise DataSourceError(
            f"{folder}: folder not found (ingest.path must name a folder with one sub-folder per class)"
        )
    height, width, *rest = params.image_shape
    channels = rest[0] if rest else 3
    if channels not in (1, 3, 4):
        raise DataSourceError(f"ingest.image_shape: {channels} channels; image folders give 1, 3 or 4")
    classes = sorted(path for path in folder.iterdir() if path.is_dir())
    files = [
        (file, kind.name)
        for kind in classes
        for file in sorted(kind.rglob("*"))
        if file.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataSourceError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders; expected {folder}/<class>/<image>"
        )
    schema = pa.schema([(IMAGE_PATH, pa.string()), ("target", pa.string()), (IMAGE_MD5, pa.string())])

    def batches() -> Iterator[pa.RecordBatch]:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="kerasflow-images") as pool:
            for start in range(0, len(files), params.batch_rows):
                chunk = files[start : start + params.batch_rows]
                digests = list(pool.map(lambda item: check_image(item[0], channels), chunk))
                yield pa.record_batch(
                    [
                        pa.array([file.relative_to(folder).as_posix() for file, _ in chunk]),
                        pa.array([label for _, label in chunk]),
                        pa.array(digests),
                    ],
                    schema=schema,
                )

    return SourceData(
        batches,
        target="target",
        schema=schema,
        rows=len(files),
        image_shape=[height, width, channels],
        image_root=str(folder.resolve()),
    )


def check_image(path: Path, channels: int) -> str:
    """The image file's md5, once TensorFlow has decoded it as training will; a file it cannot decode is a
    DataSourceError naming it."""
    import tensorflow as tf

    data = path.read_bytes()
    try:
        tf.io.decode_image(data, channels=channels, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise DataSourceError(f"{path}: not an image TensorFlow can decode ({reason}); remove or replace it") from None
    return hashlib.md5(data).hexdigest()


@dataclass
class TargetProbe:
    """What the task is inferred from, gathered as the target streams by: its type, and its distinct values
    (up to a few more than a classification may have)."""

    numeric: bool = True
    integral: bool = True
    values: set[Any] = field(default_factory=set)

    def add(self, column: pa.Array) -> None:
        series = column.to_pandas()
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            self.numeric = False
        present = series.dropna()
        if self.numeric and len(present):
            self.integral = self.integral and bool(np.all(np.mod(present.to_numpy(dtype="float64"), 1) == 0))
        if len(self.values) <= MAX_CLASSES:
            self.values.update(present.unique().tolist()[: MAX_CLASSES + 1])

    def task(self) -> str:
        return target_task(self.numeric, self.integral, len(self.values))


def load_source(params: IngestParams) -> SourceData:
    return source_of(params).open(params)


def where(params: IngestParams) -> str:
    """How messages name the user's data: the file or folder, or the built-in dataset."""
    return params.path or f"{params.source} dataset {params.dataset!r}"


def choose_columns(data: SourceData, params: IngestParams) -> tuple[list[str], str | None]:
    """The feature columns (every column but the target, or ingest.features) and the text column; a duplicate,
    missing or unknown name is a DataSourceError naming the user's file."""
    names = list(data.schema.names)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataSourceError(f"{where(params)}: column name(s) {duplicates} appear more than once; rename them")
    target = data.target
    if target not in names:
        hint = delimiter_hint(Path(params.path), params) if params.source == "file" and params.path else ""
        raise DataSourceError(
            f"{where(params)}: target column {target!r} not found (ingest.target); columns are {names[:20]}{hint}"
        )
    features = [name for name in names if name != target and (data.image_root is None or name == IMAGE_PATH)]
    if params.features:
        unknown = [name for name in params.features if name not in names or name == target]
        if unknown:
            raise DataSourceError(
                f"{where(params)}: ingest.features names {unknown}, which are not feature columns; "
                f"columns are {features[:20]}"
            )
        features = list(params.features)
    # Lists and structs have no place in a model's inputs (they would become category strings): named, not used.
    nested = [name for name in features if pa.types.is_nested(data.schema.field(name).type)]
    if nested and params.features:
        raise DataSourceError(
            f"{where(params)}: ingest.features names {nested}, which hold nested values (lists or structs); "
            "leave them out of ingest.features"
        )
    if nested:
        logger.warning("%s: column(s) %s hold nested values (lists or structs): left out", where(params), nested)
        features = [name for name in features if name not in nested]
    text_column = params.text_column or data.text_column
    if text_column and text_column not in features:
        raise DataSourceError(
            f"{where(params)}: ingest.text_column {text_column!r} is not a feature column; columns are {features[:20]}"
        )
    return features, text_column


def sample_limit(data: SourceData, params: IngestParams, seed: int) -> np.uint64 | None:
    """With ingest.max_rows below the source's rows: the hash bound of the seeded sample of that many rows."""
    if not params.max_rows:
        return None
    rows = data.rows if data.rows is not None else sum(batch.num_rows for batch in data.batches())
    if rows <= params.max_rows:
        return None
    return smallest_hashes(lambda: position_hashes(rows, seed, SAMPLE_SALT), params.max_rows)


def ingest_dataset(params: IngestParams, seed: int, data_path: Path, meta_path: Path) -> RawDatasetInfo:
    """Stream the source into the raw dataset (Parquet, row groups of ingest.batch_rows) and its description;
    return the description (with the file's md5). Nothing is left at either path on failure."""
    data = load_source(params)
    features, text_column = choose_columns(data, params)
    limit = sample_limit(data, params, seed)
    while True:
        try:
            md5, probe = write_rows(data, features, limit, seed, params, data_path)
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            if data.describe_error is None:
                raise DataSourceError(f"{where(params)}: could not be read: {error}") from error
            found = data.describe_error(error)
            if isinstance(found, DataSourceError):
                raise found from None
            data = found
    if params.task != "auto":
        task = params.task
    elif data.dataset in CLASSIFICATION_DATASETS:
        task = "classification"
    else:
        task = probe.task()
    image_shape = params.image_shape or IMAGE_SHAPES.get(data.dataset or "")
    if image_shape and len(image_shape) == 2:
        image_shape = [*image_shape, 1]
    builtin = not source_of(params).names_path
    info = RawDatasetInfo(
        target=data.target,
        task=task,
        feature_columns=features,
        image_shape=list(image_shape) if image_shape else None,
        text_column=text_column,
        source={"source": params.source, "dataset": data.dataset if builtin else None, "path": params.path},
        rows=row_count(data_path),
        md5=md5,
        file=data_path.name,
        image_root=data.image_root,
    )
    try:
        write_json(meta_path, info.to_dict())
    except BaseException:
        data_path.unlink(missing_ok=True)
        raise
    logger.info(
        "ingested %d rows x %d columns from %s (md5 %s)", info.rows, len(features) + 1, info.source_label, info.md5
    )
    return info


def write_rows(
    data: SourceData, features: list[str], limit: np.uint64 | None, seed: int, params: IngestParams, data_path: Path
) -> tuple[str, TargetProbe]:
    """The source's chosen columns (and rows, with max_rows) into the raw Parquet file; its md5 and the target probe."""
    from tasks.sampling import hash_positions

    columns = [*features, data.target] + ([IMAGE_MD5] if data.image_root else [])
    probe = TargetProbe()
    position = 0
    with ParquetStream(data_path, params.batch_rows, schema=pa.schema([data.schema.field(n) for n in columns])) as out:
        for batch in data.batches():
            batch = batch.select(columns)
            if limit is not None:
                hashes = hash_positions(np.arange(position, position + batch.num_rows), seed, SAMPLE_SALT)
                position += batch.num_rows
                batch = batch.filter(pa.array(hashes <= limit))
            if params.drop_missing_target and batch.column(data.target).null_count:
                batch = batch.filter(batch.column(data.target).is_valid())
            probe.add(batch.column(data.target))
            out.write(batch)
        return out.commit(), probe


def read_raw(data_path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
    """The raw dataset, a batch of rows at a time, each frame indexed by its rows' positions."""
    from kerasflow.tables import iter_frames

    yield from iter_frames(data_path, batch_rows, columns)


def load_dataset(params: IngestParams, seed: int) -> tuple[pd.DataFrame, RawDatasetInfo]:
    """The source ingested as the stage does, then read back whole: the raw table and its description (for
    small data and tests; the stage streams)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kerasflow-ingest-") as folder:
        info = ingest_dataset(params, seed, Path(folder) / "dataset.parquet", Path(folder) / "dataset.json")
        return pd.read_parquet(Path(folder) / "dataset.parquet"), info


__all__ = ["DataSourceError", "SourceData", "TargetProbe", "ingest_dataset", "iter_batches"]
