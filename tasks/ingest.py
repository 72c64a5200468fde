"""Ingest: load the raw dataset from its source into one Parquet file plus metadata."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import IngestParams
from kerasflow.io import atomic_path, file_md5, write_json
from kerasflow.records import RawDatasetInfo

logger = logging.getLogger(__name__)

# Built-in datasets whose target is a class label; the rest are regressions.
CLASSIFICATION_DATASETS = {"digits", "breast_cancer", "iris", "wine", "mnist", "fashion_mnist", "imdb"}
IMAGE_SHAPES = {"digits": [8, 8, 1], "mnist": [28, 28, 1], "fashion_mnist": [28, 28, 1]}
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


class DataSourceError(RuntimeError):
    """The raw data could not be read or downloaded; `transient` when trying again may help."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RawDataset:
    """What ingest produced: the frame and what later stages need to know about it."""

    frame: pd.DataFrame
    target: str
    task: str
    feature_columns: list[str]
    image_shape: list[int] | None = None
    text_column: str | None = None
    source: dict[str, Any] = field(default_factory=dict)


def _load_sklearn(name: str) -> pd.DataFrame:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(column) for column in frame.columns]
    return frame


def _images_to_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    flat = images.reshape(len(images), -1)
    columns = [f"pixel_{index}" for index in range(flat.shape[1])]
    frame = pd.DataFrame(flat, columns=columns)
    frame["target"] = labels.astype("int64")
    return frame


def _load_keras(name: str) -> pd.DataFrame:
    """Download (or read from ~/.keras/datasets) one of the keras.datasets sources."""
    import keras

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
        return pd.DataFrame({"text": texts, "target": labels.astype("int64")})
    features = np.concatenate([x_train, x_test])
    if name == "boston_housing":
        columns = ["crim", "zn", "indus", "chas", "nox", "rm", "age", "dis", "rad", "tax", "ptratio", "b", "lstat"]
        frame = pd.DataFrame(features, columns=columns)
        frame["target"] = labels.astype("float64")
        return frame
    return _images_to_frame(features, labels)


def _load_image_folder(path: str, image_shape: list[int]) -> pd.DataFrame:
    """Images laid out one sub-folder per class, resized to image_shape, as pixel columns and a label."""
    import keras

    folder = Path(path)
    if not folder.is_dir():
        raise DataSourceError(
            f"{folder}: folder not found (ingest.path must name a folder with one sub-folder per class)"
        )
    height, width, *rest = image_shape
    channels = rest[0] if rest else 3
    modes = {1: "grayscale", 3: "rgb", 4: "rgba"}
    if channels not in modes:
        raise DataSourceError(f"ingest.image_shape: {channels} channels; image folders give 1, 3 or 4")
    try:
        dataset = keras.utils.image_dataset_from_directory(
            folder,
            labels="inferred",
            label_mode="int",
            color_mode=modes[channels],
            image_size=(height, width),
            batch_size=None,
            shuffle=False,
            verbose=False,
        )
    except (ValueError, OSError) as error:
        raise DataSourceError(f"{folder}: could not read images: {error}") from error
    images = np.stack([image.numpy() for image, _ in dataset]) if dataset.cardinality() else np.empty((0,))
    if not len(images):
        raise DataSourceError(f"{folder}: no images found in its class sub-folders")
    labels = np.array([dataset.class_names[int(label)] for _, label in dataset])
    frame = _images_to_frame(images.astype("float32"), np.zeros(len(images)))
    frame["target"] = labels
    return frame


def _load_file(path: str) -> pd.DataFrame:
    file = Path(path)
    if not file.is_file():
        raise DataSourceError(f"{file}: file not found (ingest.path must name a .csv or .parquet file)")
    try:
        if file.suffix.lower() == ".parquet":
            return pd.read_parquet(file)
        if file.suffix.lower() in (".csv", ".txt"):
            return pd.read_csv(file)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataSourceError(f"{file}: could not be read as {file.suffix.lstrip('.')}: {error}") from error
    raise DataSourceError(f"{file}: unsupported file type {file.suffix!r}; expected .csv or .parquet")


def infer_task(frame: pd.DataFrame, target: str, dataset: str | None) -> str:
    """Classification when the target is a label (text, bool, or few integer values)."""
    if dataset in CLASSIFICATION_DATASETS:
        return "classification"
    column = frame[target]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "classification"
    values = column.dropna()
    is_integral = bool(len(values)) and bool(np.all(np.mod(values, 1) == 0))
    return "classification" if is_integral and values.nunique() <= 20 else "regression"


def load_dataset(params: IngestParams, seed: int) -> RawDataset:
    """Load the configured source into a DataFrame (no files written)."""
    if params.source == "sklearn":
        frame = _load_sklearn(params.dataset)
        target = "target"
    elif params.source == "keras":
        frame = _load_keras(params.dataset)
        target = "target"
    elif params.source == "image_folder":
        frame = _load_image_folder(params.path, params.image_shape)
        target = "target"
    else:
        frame = _load_file(params.path)
        target = params.target
    if target not in frame.columns:
        columns = list(frame.columns)[:20]
        raise DataSourceError(
            f"{params.path or params.dataset}: target column {target!r} not found; columns are {columns}"
        )
    if params.max_rows and len(frame) > params.max_rows:
        frame = frame.sample(n=params.max_rows, random_state=seed).sort_index().reset_index(drop=True)
    builtin = params.source in ("sklearn", "keras")
    dataset = params.dataset if builtin else None
    task = params.task if params.task != "auto" else infer_task(frame, target, dataset)
    text_column = params.text_column or ("text" if params.dataset == "imdb" and params.source == "keras" else None)
    image_shape = params.image_shape or (IMAGE_SHAPES.get(params.dataset) if builtin else None)
    if image_shape and len(image_shape) == 2:
        image_shape = [*image_shape, 1]
    features = [column for column in frame.columns if column != target]
    if params.features:
        unknown = [column for column in params.features if column not in frame.columns or column == target]
        if unknown:
            raise DataSourceError(
                f"{params.path or params.dataset}: ingest.features names {unknown}, which are not feature columns; "
                f"columns are {features[:20]}"
            )
        features = list(params.features)
        frame = frame[[*features, target]]
    if text_column and text_column not in features:
        raise DataSourceError(
            f"{params.path or params.dataset}: ingest.text_column {text_column!r} is not a feature column; "
            f"columns are {features[:20]}"
        )
    return RawDataset(
        frame=frame,
        target=target,
        task=task,
        feature_columns=features,
        image_shape=list(image_shape) if image_shape else None,
        text_column=text_column,
        source={"source": params.source, "dataset": dataset, "path": params.path},
    )


def write_raw(dataset: RawDataset, data_path: Path, meta_path: Path) -> RawDatasetInfo:
    """Write the raw frame (Parquet) and its description, atomically; return the description."""
    with atomic_path(data_path) as temporary:
        dataset.frame.to_parquet(temporary, index=False)
    info = RawDatasetInfo(
        target=dataset.target,
        task=dataset.task,
        feature_columns=dataset.feature_columns,
        image_shape=dataset.image_shape,
        text_column=dataset.text_column,
        source=dataset.source,
        rows=len(dataset.frame),
        md5=file_md5(data_path),
        file=data_path.name,
    )
    write_json(meta_path, info.to_dict())
    logger.info(
        "ingested %d rows x %d columns from %s (md5 %s)",
        info.rows,
        len(info.feature_columns) + 1,
        info.source_label,
        info.md5,
    )
    return info


def ingest_dataset(params: IngestParams, seed: int, data_path: Path, meta_path: Path) -> RawDatasetInfo:
    """Load the source and write it as the raw dataset; returns its metadata (with md5)."""
    return write_raw(load_dataset(params, seed), data_path, meta_path)
