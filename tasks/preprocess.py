"""Preprocess: seeded (stratified) train / validation / test split of the raw features, by a hash of
each row's position, so the split is the same on every run and every machine.

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


SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def row_hash(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row position, from the seed alone (splitmix64): the same rows get
    the same numbers on any machine, in any order they are read, one batch or many."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_splits(y: np.ndarray, params: PreprocessParams, seed: int, classification: bool) -> np.ndarray:
    """Which split each row goes to (SPLIT_CODES): by the rank of its seeded hash, within its class when
    stratified, so each split has its share of every class and the assignment never depends on shuffle order."""
    stratified = classification and params.stratify
    groups = [np.flatnonzero(y == label) for label in np.unique(y)] if stratified else [np.arange(len(y))]
    assignment = np.full(len(y), SPLIT_CODES["train"], dtype=np.int8)
    order_key = row_hash(np.arange(len(y)), seed)
    for rows in groups:
        ranked = rows[np.argsort(order_key[rows], kind="stable")]
        test_rows = max(1, round(len(rows) * params.test_fraction))
        val_rows = max(1, round(len(rows) * params.val_fraction))
        if len(rows) - test_rows - val_rows < 1:
            label = f" of class {y[rows[0]].item()!r}" if stratified else ""
            raise ValueError(
                f"{len(rows)} rows{label} are too few to split into train / val / test with test_fraction "
                f"{params.test_fraction} and val_fraction {params.val_fraction} (each split needs at least 1 row)"
            )
        assignment[ranked[:test_rows]] = SPLIT_CODES["test"]
        assignment[ranked[test_rows : test_rows + val_rows]] = SPLIT_CODES["val"]
    return assignment


def split_dataset(
    x: np.ndarray | pd.DataFrame, y: np.ndarray, params: PreprocessParams, seed: int, classification: bool
) -> dict[str, Split]:
    """Seeded train / val / test split (stratified on the label for classification), rows in their original order."""
    assignment = assign_splits(y, params, seed, classification)
    splits = {}
    for name, code in SPLIT_CODES.items():
        rows = np.flatnonzero(assignment == code)
        part = x.iloc[rows].reset_index(drop=True) if isinstance(x, pd.DataFrame) else x[rows]
        splits[name] = Split(part, y[rows])
    return splits


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


def split_files(directory: Path, name: str) -> tuple[Path, Path]:
    """A split's feature file (Parquet for columns, .npy for images) and its label file."""
    directory = Path(directory)
    table = directory / f"x_{name}.parquet"
    return (table if table.is_file() else directory / f"x_{name}.npy"), directory / f"y_{name}.npy"


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
