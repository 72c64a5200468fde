"""Preprocess splits reproducibly, keeps class balance, and fits scaling on train only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.config import PreprocessParams
from tasks.preprocess import fit_scaling, preprocess_dataset, read_split, read_state, split_dataset, write_processed


def test_split_sizes_stratification_and_seed(tabular_frame, tabular_meta):
    params = PreprocessParams(test_fraction=0.2, val_fraction=0.2)
    splits, state = preprocess_dataset(tabular_frame, tabular_meta, params, seed=7)
    assert state["rows"] == {"train": 36, "val": 12, "test": 12}
    overall = tabular_frame["label"].mean()
    for split in splits.values():
        assert abs(split.y.mean() - overall) < 0.1  # stratified: each split keeps the class balance
    again, _ = preprocess_dataset(tabular_frame, tabular_meta, params, seed=7)
    other, _ = preprocess_dataset(tabular_frame, tabular_meta, params, seed=8)
    assert np.array_equal(splits["test"].x, again["test"].x)
    assert not np.array_equal(splits["test"].x, other["test"].x)


def test_scaling_statistics_come_from_the_training_split(tabular_frame, tabular_meta):
    splits, state = preprocess_dataset(tabular_frame, tabular_meta, PreprocessParams(), seed=0)
    assert np.allclose(state["scaling"]["mean"], splits["train"].x.mean(axis=0))
    assert not np.allclose(state["scaling"]["mean"], tabular_frame[["a", "b"]].to_numpy().mean(axis=0))


def test_images_are_reshaped_and_scaled_by_their_maximum():
    frame = pd.DataFrame(np.arange(40 * 4).reshape(40, 4) % 17, columns=[f"p{i}" for i in range(4)])
    frame["target"] = [0, 1] * 20
    meta = {
        "target": "target",
        "task": "classification",
        "feature_columns": ["p0", "p1", "p2", "p3"],
        "image_shape": [2, 2, 1],
    }
    splits, state = preprocess_dataset(frame, meta, PreprocessParams(), seed=0)
    assert splits["train"].x.shape[1:] == (2, 2, 1) and state["input_shape"] == [2, 2, 1]
    assert state["scaling"] == {"kind": "max", "scale": 1 / 16}


def test_string_labels_are_encoded_and_kept(tabular_frame, tabular_meta):
    frame = tabular_frame.assign(label=tabular_frame["label"].map({0: "no", 1: "yes"}))
    splits, state = preprocess_dataset(frame, tabular_meta, PreprocessParams(), seed=0)
    assert state["classes"] == ["no", "yes"] and set(splits["train"].y) == {0, 1}


def test_constant_columns_do_not_divide_by_zero():
    scaling = fit_scaling(np.ones((5, 2), dtype="float32"), "standard", is_image=False)
    assert scaling["variance"] == [1.0, 1.0]


def test_too_few_rows_for_the_split():
    x, y = np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="6 rows are too few to split"):
        split_dataset(x, y, PreprocessParams(test_fraction=0.2, val_fraction=0.1), seed=0, classification=True)


def test_outputs_round_trip_and_replace_atomically(tmp_path, tabular_frame, tabular_meta):
    splits, state = preprocess_dataset(tabular_frame, tabular_meta, PreprocessParams(), seed=0)
    folder = tmp_path / "processed"
    write_processed(splits, state, folder)
    write_processed(splits, state, folder)  # a rerun swaps the folder, it does not nest or merge
    assert np.array_equal(read_split(folder, "val").y, splits["val"].y)
    assert read_state(folder)["rows"] == state["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]
    with pytest.raises(FileNotFoundError, match="run the preprocess stage first"):
        read_split(tmp_path / "nowhere", "train")
