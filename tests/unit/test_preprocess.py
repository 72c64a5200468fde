"""Preprocess splits reproducibly, keeps class balance, and keeps the features raw (the model adapts to them)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from kerasflow.config import PreprocessParams
from kerasflow.model_interface import ModelInputs
from kerasflow.records import RawDatasetInfo
from tasks.preprocess import (
    assign_splits,
    preprocess_dataset,
    read_split,
    read_state,
    row_hash,
    split_dataset,
    write_processed,
)
from tests.unit.helpers import mixed_frame

MIXED_META = RawDatasetInfo(
    target="label", task="classification", feature_columns=["size", "color", "note"], text_column="note"
)


def test_split_sizes_stratification_and_seed(tabular_frame, tabular_meta):
    params = PreprocessParams(test_fraction=0.2, val_fraction=0.2)
    splits, state = preprocess_dataset(tabular_frame, tabular_meta, params, seed=7)
    assert state.rows == {"train": 36, "val": 12, "test": 12}
    overall = tabular_frame["label"].mean()
    for split in splits.values():
        assert abs(split.y.mean() - overall) < 0.1  # stratified: each split keeps the class balance
    again, _ = preprocess_dataset(tabular_frame, tabular_meta, params, seed=7)
    other, _ = preprocess_dataset(tabular_frame, tabular_meta, params, seed=8)
    assert splits["test"].x.equals(again["test"].x)
    assert not splits["test"].x.equals(other["test"].x)


def test_columns_stay_raw_and_the_state_describes_the_inputs():
    frame = mixed_frame(rows=100)
    splits, state = preprocess_dataset(frame, MIXED_META, PreprocessParams(), seed=0)
    assert state.inputs.kind == "columns"
    assert {entry.column: entry.kind for entry in state.inputs.columns} == {
        "size": "numeric",
        "color": "categorical",
        "note": "text",
    }
    assert state.target == "label" and state.classes == [0, 1]
    train = splits["train"].x
    assert isinstance(train, pd.DataFrame) and list(train.columns) == ["size", "color", "note"]
    assert list(train.index) == list(range(len(train)))  # index reset after the shuffle
    # Nothing is scaled, imputed or encoded here: the rows are the raw rows, missing values included.
    rows = pd.concat([split.x for split in splits.values()])
    assert rows["size"].isna().sum() == frame["size"].isna().sum()
    assert sorted(rows["size"].dropna()) == sorted(frame["size"].dropna())
    assert set(rows["color"].dropna()) == {"red", "green", "blue"}


def test_images_are_reshaped_and_left_unscaled():
    frame = pd.DataFrame(np.arange(40 * 4).reshape(40, 4) % 17, columns=[f"p{i}" for i in range(4)])
    frame["target"] = [0, 1] * 20
    meta = RawDatasetInfo(
        target="target", task="classification", feature_columns=["p0", "p1", "p2", "p3"], image_shape=[2, 2, 1]
    )
    splits, state = preprocess_dataset(frame, meta, PreprocessParams(), seed=0)
    assert splits["train"].x.shape[1:] == (2, 2, 1) and splits["train"].x.dtype == np.float32
    assert state.inputs == ModelInputs.images([2, 2, 1])
    assert splits["train"].x.max() == 16  # raw pixel values; the model's first layer scales them


def test_string_labels_are_encoded_and_kept(tabular_frame, tabular_meta):
    frame = tabular_frame.assign(label=tabular_frame["label"].map({0: "no", 1: "yes"}))
    splits, state = preprocess_dataset(frame, tabular_meta, PreprocessParams(), seed=0)
    assert state.classes == ["no", "yes"] and set(splits["train"].y) == {0, 1}


def test_regression_labels_are_floats(tabular_frame, tabular_meta):
    meta = replace(tabular_meta, task="regression")
    splits, state = preprocess_dataset(tabular_frame.assign(label=tabular_frame["a"] * 2), meta, PreprocessParams(), 0)
    assert state.classes is None and splits["train"].y.dtype == np.float32


def test_unknown_categorical_columns_stop_preprocess(tabular_frame, tabular_meta):
    with pytest.raises(ValueError, match=r"categorical_columns names \['zip'\]"):
        preprocess_dataset(tabular_frame, tabular_meta, PreprocessParams(categorical_columns=["zip"]), seed=0)


def test_too_few_rows_for_the_split():
    x, y = np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="2 rows of class 0 are too few to split"):
        split_dataset(x, y, PreprocessParams(test_fraction=0.2, val_fraction=0.1), seed=0, classification=True)


def test_columns_round_trip_through_parquet(tmp_path):
    splits, state = preprocess_dataset(mixed_frame(rows=100), MIXED_META, PreprocessParams(), seed=0)
    folder = tmp_path / "processed"
    write_processed(splits, state, folder)
    write_processed(splits, state, folder)  # a rerun swaps the folder, it does not nest or merge
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"x_{name}.parquet" for name in splits] + [f"y_{name}.npy" for name in splits] + ["state.json"]
    )
    for name, split in splits.items():
        back = read_split(folder, name)
        pd.testing.assert_frame_equal(back.x, split.x, check_dtype=False)  # NaN and None survive
        assert np.array_equal(back.y, split.y)
    assert read_state(folder) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]


def test_images_round_trip_as_npy(tmp_path):
    x = np.arange(30 * 4, dtype="float32").reshape(30, 4)
    frame = pd.DataFrame(x, columns=list("abcd")).assign(target=[0, 1, 2] * 10)
    meta = RawDatasetInfo(
        **{"target": "target", "task": "classification", "feature_columns": list("abcd"), "image_shape": [2, 2, 1]}
    )
    splits, state = preprocess_dataset(frame, meta, PreprocessParams(), seed=0)
    write_processed(splits, state, tmp_path / "processed")
    assert (tmp_path / "processed" / "x_train.npy").is_file()
    assert not list((tmp_path / "processed").glob("*.parquet"))
    assert np.array_equal(read_split(tmp_path / "processed", "test").x, splits["test"].x)


def test_reading_before_preprocess_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the preprocess stage first"):
        read_split(tmp_path / "nowhere", "train")


def test_the_split_is_a_seeded_hash_of_each_row_the_same_on_any_machine():
    # Fixed numbers from the seed alone (splitmix64, checked against a pure-Python reference): no random
    # generator state, no shuffle order, nothing that differs between machines.
    expected = [0.030709448081447266, 0.23636053487376962, 0.008218912220709362]
    np.testing.assert_array_equal(row_hash(np.arange(3), seed=42), expected)
    y = np.arange(1000) % 4
    params = PreprocessParams(test_fraction=0.2, val_fraction=0.1)
    np.random.seed(1)
    first = assign_splits(y, params, seed=3, classification=True)
    np.random.seed(2)
    assert np.array_equal(assign_splits(y, params, seed=3, classification=True), first)
    assert not np.array_equal(assign_splits(y, params, seed=4, classification=True), first)
    # Stratified: every class has exactly its share in each split.
    for label in range(4):
        assert np.bincount(first[y == label], minlength=3).tolist() == [175, 25, 50]
    # Reading the rows in another order does not move them: a row's split follows its position in the raw file.
    assert np.array_equal(row_hash(np.array([2, 0, 1]), 42), row_hash(np.arange(3), 42)[[2, 0, 1]])
