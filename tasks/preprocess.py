"""Preprocess: seeded (stratified) train / validation / test split and scaling statistics.

The scaling statistics are fitted on the training split only and written to the
preprocessing state; `build_model` puts them into the model as its first layer, so
the trained model takes raw values and nothing has to be pickled beside it.
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

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Features and labels of one split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def encode_labels(frame: pd.DataFrame, meta: dict[str, Any]) -> tuple[np.ndarray, list[Any] | None]:
    """Labels as class indices (classification) or float32 values (regression)."""
    target = frame[meta["target"]]
    if meta["task"] != "classification":
        return target.to_numpy(dtype="float32"), None
    classes = sorted(target.unique().tolist(), key=lambda value: (str(type(value)), value))
    index = {label: position for position, label in enumerate(classes)}
    return target.map(index).to_numpy(dtype="int64"), [
        value.item() if hasattr(value, "item") else value for value in classes
    ]


def to_features(frame: pd.DataFrame, meta: dict[str, Any]) -> np.ndarray:
    """Feature matrix as float32, reshaped to (rows, height, width, channels) for images."""
    if meta.get("text_column"):
        raise ValueError(
            f"column {meta['text_column']!r} holds text; text models are not supported by this preprocessing yet"
        )
    x = frame[meta["feature_columns"]].to_numpy(dtype="float32")
    if meta.get("image_shape"):
        x = x.reshape(len(x), *meta["image_shape"])
    return x


def fit_scaling(x_train: np.ndarray, kind: str, is_image: bool) -> dict[str, Any]:
    """Scaling statistics from the training split: 'max' for images, 'standard' for columns."""
    if kind == "auto":
        kind = "max" if is_image else "standard"
    if kind == "none":
        return {"kind": "none"}
    if kind == "max":
        peak = float(np.abs(x_train).max()) or 1.0
        return {"kind": "max", "scale": 1.0 / peak}
    flat = x_train.reshape(len(x_train), -1)
    variance = flat.var(axis=0)
    # Constant columns keep variance 1 so the normalization divides by one, not zero.
    variance = np.where(variance > 0, variance, 1.0)
    return {"kind": "standard", "mean": flat.mean(axis=0).tolist(), "variance": variance.tolist()}


def split_dataset(
    x: np.ndarray, y: np.ndarray, params: PreprocessParams, seed: int, classification: bool
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
    return {"train": Split(x_train, y_train), "val": Split(x_val, y_val), "test": Split(x_test, y_test)}


def preprocess_dataset(
    frame: pd.DataFrame, meta: dict[str, Any], params: PreprocessParams, seed: int
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Split and fit scaling; return the splits and the preprocessing state."""
    x = to_features(frame, meta)
    y, classes = encode_labels(frame, meta)
    classification = meta["task"] == "classification"
    splits = split_dataset(x, y, params, seed, classification)
    state = {
        "task": meta["task"],
        "classes": classes,
        "input_shape": list(x.shape[1:]),
        "feature_columns": meta["feature_columns"],
        "image_shape": meta.get("image_shape"),
        "scaling": fit_scaling(splits["train"].x, params.scaling, bool(meta.get("image_shape"))),
        "rows": {name: len(split) for name, split in splits.items()},
        "seed": seed,
    }
    return splits, state


def write_processed(splits: dict[str, Split], state: dict[str, Any], directory: Path) -> None:
    """Write splits as .npy (memory-mappable) and the state as JSON, swapping the folder in atomically."""
    with atomic_dir(directory) as temporary:
        for name, split in splits.items():
            np.save(temporary / f"x_{name}.npy", split.x)
            np.save(temporary / f"y_{name}.npy", split.y)
        write_json(temporary / "state.json", state)


def read_split(directory: Path, name: str) -> Split:
    directory = Path(directory)
    if not (directory / f"x_{name}.npy").is_file():
        raise FileNotFoundError(f"{directory}/x_{name}.npy: not found; run the preprocess stage first")
    return Split(np.load(directory / f"x_{name}.npy"), np.load(directory / f"y_{name}.npy"))


def read_state(directory: Path) -> dict[str, Any]:
    return read_json(Path(directory) / "state.json")
