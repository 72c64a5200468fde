"""Preprocess splits reproducibly and keeps class balance, streamed batch by batch; the features stay raw (the
model's layers take them raw), and the input layers' constants are fitted on the training rows in the same pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kerasflow.config import PreprocessParams
from kerasflow.model_interface import ModelInputs
from kerasflow.records import RawDatasetInfo
from kerasflow.tables import ParquetStream
from tasks.preprocess import (
    LABEL,
    assign_splits,
    preprocess_dataset,
    read_split,
    read_state,
    row_hash,
    split_dataset,
)
from tests.unit.helpers import mixed_frame

MIXED_META = RawDatasetInfo(
    target="label", task="classification", feature_columns=["size", "color", "note"], text_column="note"
)


def write_raw(frame: pd.DataFrame, path: Path, row_group_rows: int = 1000) -> Path:
    with ParquetStream(path, row_group_rows) as stream:
        stream.write(pa.Table.from_pandas(frame, preserve_index=False))
        stream.commit()
    return path


def preprocess(frame, info, params, seed, folder: Path, raw_groups: int = 1000):
    """The raw frame written as the raw dataset, preprocessed into `folder`; the splits read back in memory."""
    raw = write_raw(frame, folder / "raw.parquet", raw_groups)
    state = preprocess_dataset(raw, info, params, seed, folder / "processed")
    return {name: read_split(folder / "processed", name) for name in ("train", "val", "test")}, state


def test_split_sizes_stratification_and_seed(tabular_frame, tabular_meta, tmp_path):
    params = PreprocessParams(test_fraction=0.2, val_fraction=0.2)
    splits, state = preprocess(tabular_frame, tabular_meta, params, 7, tmp_path / "a")
    assert state.rows == {"train": 36, "val": 12, "test": 12}
    overall = tabular_frame["label"].mean()
    for split in splits.values():
        assert abs(split.y.mean() - overall) < 0.1  # stratified: each split keeps the class balance
    again, _ = preprocess(tabular_frame, tabular_meta, params, 7, tmp_path / "b")
    other, _ = preprocess(tabular_frame, tabular_meta, params, 8, tmp_path / "c")
    assert splits["test"].x.equals(again["test"].x)
    assert not splits["test"].x.equals(other["test"].x)


def test_the_split_does_not_depend_on_how_the_file_is_batched(tmp_path):
    """The same rows in row groups of 37 or of 1000, read in batches of 29 or of 4096: the same split, the same
    fitted constants, run after run."""
    frame = mixed_frame(rows=400)
    results = []
    for index, (raw_groups, batch) in enumerate([(1000, 4096), (37, 29), (37, 29)]):
        params = PreprocessParams(row_group_rows=batch)
        splits, state = preprocess(frame, MIXED_META, params, 3, tmp_path / str(index), raw_groups)
        results.append((splits, state))
    (first, first_state), *others = results
    for splits, state in others:
        for name in ("train", "val", "test"):
            pd.testing.assert_frame_equal(splits[name].x, first[name].x)
            assert np.array_equal(splits[name].y, first[name].y)
        assert state.rows == first_state.rows
        # The same vocabularies; the same moments up to the last bits (sums merged in another order).
        assert (
            state.fitted.categorical == first_state.fitted.categorical and state.fitted.text == first_state.fitted.text
        )
        for column, fit in state.fitted.numeric.items():
            other = first_state.fitted.numeric[column]
            assert [fit.fill, fit.mean, fit.variance] == pytest.approx([other.fill, other.mean, other.variance], 1e-12)
    # The split files really are in row groups of preprocess.row_group_rows.
    groups = pq.ParquetFile(tmp_path / "1" / "processed" / "train.parquet").metadata
    assert groups.num_row_groups > 5 and groups.row_group(0).num_rows == 29


def test_columns_stay_raw_and_the_state_describes_the_inputs(tmp_path):
    frame = mixed_frame(rows=100)
    splits, state = preprocess(frame, MIXED_META, PreprocessParams(), 0, tmp_path)
    assert state.inputs.kind == "columns"
    assert {entry.column: entry.kind for entry in state.inputs.columns} == {
        "size": "numeric",
        "color": "categorical",
        "note": "text",
    }
    assert state.target == "label" and state.classes == [0, 1]
    train = splits["train"].x
    assert isinstance(train, pd.DataFrame) and list(train.columns) == ["size", "color", "note"]
    assert list(train.index) == list(range(len(train)))
    # Nothing is scaled, imputed or encoded in the files: the rows are the raw rows, missing values included.
    rows = pd.concat([split.x for split in splits.values()])
    assert rows["size"].isna().sum() == frame["size"].isna().sum()
    assert sorted(rows["size"].dropna()) == sorted(frame["size"].dropna())
    assert set(rows["color"].dropna()) == {"red", "green", "blue"}
    # ...and the constants are in the state: fitted on the training rows only.
    fitted = state.fitted
    assert fitted.numeric["size"].fill == pytest.approx(train["size"].mean())
    assert set(fitted.categorical["color"]) >= {"red", "green", "blue"}
    assert "great" in fitted.text["note"].vocabulary or "awful" in fitted.text["note"].vocabulary
    assert state.class_counts == np.bincount(splits["train"].y).tolist()


def test_images_stay_pixels_and_their_scaling_is_fitted(tmp_path):
    frame = pd.DataFrame(np.arange(40 * 4).reshape(40, 4) % 17, columns=[f"p{i}" for i in range(4)])
    frame["target"] = [0, 1] * 20
    meta = RawDatasetInfo(
        target="target", task="classification", feature_columns=["p0", "p1", "p2", "p3"], image_shape=[2, 2, 1]
    )
    splits, state = preprocess(frame, meta, PreprocessParams(), 0, tmp_path)
    assert splits["train"].x.shape[1:] == (2, 2, 1) and splits["train"].x.dtype == np.float32
    assert state.inputs == ModelInputs.images([2, 2, 1])
    assert splits["train"].x.max() == 16  # raw pixel values; the model's first layer scales them
    assert state.fitted.image_scaling.scale == pytest.approx(1 / 16)


def test_string_labels_are_encoded_and_kept(tabular_frame, tabular_meta, tmp_path):
    frame = tabular_frame.assign(label=tabular_frame["label"].map({0: "no", 1: "yes"}))
    splits, state = preprocess(frame, tabular_meta, PreprocessParams(), 0, tmp_path)
    assert state.classes == ["no", "yes"] and set(splits["train"].y) == {0, 1}


def test_regression_labels_are_floats_and_the_target_is_scaled(tabular_frame, tabular_meta, tmp_path):
    meta = replace(tabular_meta, task="regression")
    frame = tabular_frame.assign(label=tabular_frame["a"] * 2)
    splits, state = preprocess(frame, meta, PreprocessParams(), 0, tmp_path)
    assert state.classes is None and splits["train"].y.dtype == np.float32
    assert state.fitted.target.mean == pytest.approx(splits["train"].y.mean(), rel=1e-5)
    assert state.fitted.target.std == pytest.approx(splits["train"].y.std(), rel=1e-5)


def test_unknown_categorical_columns_stop_preprocess(tabular_frame, tabular_meta, tmp_path):
    with pytest.raises(ValueError, match=r"categorical_columns names \['zip'\]"):
        preprocess(tabular_frame, tabular_meta, PreprocessParams(categorical_columns=["zip"]), 0, tmp_path)
    assert not (tmp_path / "processed").exists()  # nothing half-written


def test_too_few_rows_for_the_split():
    x, y = np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="2 rows of class 0 are too few to split"):
        split_dataset(x, y, PreprocessParams(test_fraction=0.2, val_fraction=0.1), seed=0, classification=True)


def test_a_class_with_a_single_row_is_named_by_its_label_and_the_file(tabular_meta, tmp_path):
    from kerasflow.errors import is_expected

    frame = pd.DataFrame({"a": np.arange(41.0), "b": np.arange(41.0), "label": ["cat", "dog"] * 20 + ["emu"]})
    with pytest.raises(ValueError) as raised:
        preprocess(frame, tabular_meta, PreprocessParams(), 0, tmp_path)
    message = str(raised.value)
    assert "1 rows of class 'emu' are too few to split" in message and "class 2" not in message
    assert is_expected(raised.value)  # one line at the terminal, no traceback
    assert not (tmp_path / "processed").exists()


def test_the_processed_folder_is_swapped_in_whole(tmp_path):
    frame = mixed_frame(rows=100)
    raw = write_raw(frame, tmp_path / "raw.parquet")
    folder = tmp_path / "processed"
    state = preprocess_dataset(raw, MIXED_META, PreprocessParams(), 0, folder)
    preprocess_dataset(raw, MIXED_META, PreprocessParams(), 0, folder)  # a rerun swaps the folder, it does not merge
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["train.parquet", "val.parquet", "test.parquet", "state.json", "statistics.json"]
    )
    assert read_state(folder) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw.parquet"]
    # A split file holds the raw feature columns and the encoded label.
    assert pq.read_schema(folder / "train.parquet").names == ["size", "color", "note", LABEL]


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


def test_the_split_is_each_class_in_hash_order():
    """The streaming rule is the plain one: sort each class's rows by their hash; the first test_fraction are
    test, the next val_fraction validation."""
    y = np.arange(997) % 3
    params = PreprocessParams(test_fraction=0.2, val_fraction=0.15)
    assignment = assign_splits(y, params, seed=11, classification=True)
    order = row_hash(np.arange(len(y)), 11)
    for label in range(3):
        rows = np.flatnonzero(y == label)
        ranked = rows[np.argsort(order[rows], kind="stable")]
        test, val = round(len(rows) * 0.2), round(len(rows) * 0.15)
        assert set(np.flatnonzero(assignment == 2)) & set(rows) == set(ranked[:test])
        assert set(np.flatnonzero(assignment == 1)) & set(rows) == set(ranked[test : test + val])


def test_a_constant_feature_is_noted(tabular_frame, tabular_meta, tmp_path):
    """It was once trained on without a word; the note goes to the log and, through train, to the MLflow run."""
    frame = tabular_frame.assign(flat=3.0)
    info = replace(tabular_meta, feature_columns=["a", "b", "flat"])
    _, state = preprocess(frame, info, PreprocessParams(), 0, tmp_path)
    assert "['flat'] hold one value in every training row" in state.notes["constant_columns"]
    _, plain = preprocess(tabular_frame, tabular_meta, PreprocessParams(), 0, tmp_path / "plain")
    assert "constant_columns" not in plain.notes
