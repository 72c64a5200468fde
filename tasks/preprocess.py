"""Preprocess: seeded (stratified) train / validation / test split of the raw features.

The features stay raw (images as arrays, columns as they are, text as strings): the
preprocessing layers are fitted on the training split when the model is built
(`tasks/features.py`), so the trained model takes raw input and nothing has to be
pickled beside it. The state records what each input is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from kerasflow.config import PreprocessParams
from kerasflow.io import atomic_dir, read_json, write_json
from kerasflow.records import PreprocessState, RawDatasetInfo
from tasks.features import describe_inputs, feature_matrix

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Raw features (an image array or a DataFrame of columns) and labels of one split."""

    x: np.ndarray | pd.DataFrame
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def encode_labels(frame: pd.DataFrame, info: RawDatasetInfo) -> tuple[np.ndarray, list[Any] | None]:
    """Labels as class indices (classification) or float32 values (regression)."""
    target = frame[info.target]
    if info.task != "classification":
        return target.to_numpy(dtype="float32"), None
    classes = sorted(target.unique().tolist(), key=lambda value: (str(type(value)), value))
    index = {label: position for position, label in enumerate(classes)}
    return target.map(index).to_numpy(dtype="int64"), [
        value.item() if hasattr(value, "item") else value for value in classes
    ]


def split_dataset(
    x: np.ndarray | pd.DataFrame, y: np.ndarray, params: PreprocessParams, seed: int, classification: bool
) -> dict[str, Split]:
    """Seeded train / val / test split; stratified on the label for classification."""
    rows = len(y)
    test_rows = int(np.ceil(rows * params.test_fraction))
    val_rows = int(np.ceil(rows * params.val_fraction))
    stratified = classification and params.stratify
    # A stratified split needs every class in every split.
    min_per_split = len(np.unique(y)) if stratified else 1
    if min(rows - test_rows - val_rows, val_rows, test_rows) < min_per_split:
        raise ValueError(
            f"{rows} rows are too few to split into train / val / test with test_fraction "
            f"{params.test_fraction} and val_fraction {params.val_fraction} "
            f"(each split needs at least {min_per_split} row(s))"
        )
    stratify = y if stratified else None
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_rows, random_state=seed, stratify=stratify)
    stratify = y_rest if stratified else None
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_rows, random_state=seed, stratify=stratify
    )
    if isinstance(x, pd.DataFrame):
        x_train, x_val, x_test = (part.reset_index(drop=True) for part in (x_train, x_val, x_test))
    return {"train": Split(x_train, y_train), "val": Split(x_val, y_val), "test": Split(x_test, y_test)}


def preprocess_dataset(
    frame: pd.DataFrame, info: RawDatasetInfo, params: PreprocessParams, seed: int
) -> tuple[dict[str, Split], PreprocessState]:
    """Split the raw features; return the splits and the preprocessing state (what each input is)."""
    inputs = describe_inputs(frame, info, params)
    x = feature_matrix(frame, info, inputs)
    y, classes = encode_labels(frame, info)
    splits = split_dataset(x, y, params, seed, info.task == "classification")
    state = PreprocessState(
        task=info.task,
        inputs=inputs,
        target=info.target,
        feature_columns=info.feature_columns,
        rows={name: len(split) for name, split in splits.items()},
        seed=seed,
        data_md5=info.md5,
        source=info.source,
        classes=classes,
    )
    return splits, state


def write_processed(splits: dict[str, Split], state: PreprocessState, directory: Path) -> None:
    """Write images as .npy, columns as Parquet, labels as .npy and the state as JSON; swap the folder in at once."""
    with atomic_dir(directory) as temporary:
        for name, split in splits.items():
            if isinstance(split.x, pd.DataFrame):
                split.x.to_parquet(temporary / f"x_{name}.parquet", index=False)
            else:
                np.save(temporary / f"x_{name}.npy", split.x)
            np.save(temporary / f"y_{name}.npy", split.y)
        write_json(temporary / "state.json", state.to_dict())


def read_split(directory: Path, name: str) -> Split:
    directory = Path(directory)
    labels = directory / f"y_{name}.npy"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: not found; run the preprocess stage first")
    table = directory / f"x_{name}.parquet"
    x = pd.read_parquet(table) if table.is_file() else np.load(directory / f"x_{name}.npy")
    return Split(x, np.load(labels))


def read_state(directory: Path) -> PreprocessState:
    return PreprocessState.from_dict(read_json(Path(directory) / "state.json"))
