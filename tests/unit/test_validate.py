"""Validation infers a schema, then stops every bad or drifted ingest with a named problem."""

from __future__ import annotations

import numpy as np
import pytest

from kerasflow.config import ValidateParams
from tasks.validate import DataValidationError, validate_dataset

PARAMS = ValidateParams(min_rows=10)


def test_first_ingest_infers_the_schema(tabular_frame, tabular_meta):
    schema, report = validate_dataset(tabular_frame, tabular_meta, None, PARAMS)
    assert report["ok"] and report["schema"] == "inferred"
    assert schema["labels"] == ["0", "1"] and schema["columns"]["a"]["kind"] == "numeric"


def test_a_later_ingest_within_the_schema_passes(tabular_frame, tabular_meta):
    schema, _ = validate_dataset(tabular_frame, tabular_meta, None, PARAMS)
    kept, report = validate_dataset(tabular_frame.sample(frac=0.5, random_state=1), tabular_meta, schema, PARAMS)
    assert report["ok"] and report["schema"] == "recorded" and kept is schema


def _break(frame, how):
    frame = frame.copy()
    if how == "empty":
        return frame.iloc[0:0]
    if how == "no_target":
        return frame.drop(columns="label")
    if how == "nan_target":
        frame["label"] = frame["label"].astype(float)
        frame.loc[3, "label"] = np.nan
        return frame
    if how == "single_class":
        frame["label"] = 1
        return frame
    if how == "string_feature":
        frame["a"] = frame["a"].astype(object)
        frame.loc[0, "a"] = "twelve"
        return frame
    if how == "inf_feature":
        frame.loc[0, "b"] = np.inf
        return frame
    if how == "nan_feature":
        frame.loc[0, "b"] = np.nan
        return frame
    if how == "few_rows":
        return frame.head(4)
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("empty", "the dataset is empty"),
        ("no_target", "target column 'label' is missing"),
        ("nan_target", "target column 'label' has 1 missing (NaN) value"),
        ("single_class", "has 1 class(es); classification needs at least 2"),
        ("string_feature", "column 'a' must be numeric"),
        ("inf_feature", "column 'b' has 1 infinite value"),
        ("nan_feature", "column 'b' has 1 missing (NaN) value"),
        ("few_rows", "only 4 rows"),
    ],
)
def test_bad_data_is_stopped_with_each_problem_named(tabular_frame, tabular_meta, how, expected):
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(_break(tabular_frame, how), tabular_meta, None, PARAMS)
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems
    assert "t.parquet" in str(raised.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.assign(c=1.0), "not in the recorded schema: ['c']"),
        (lambda f: f.assign(a=f["a"] * 100), "column 'a' ranges over"),
        (lambda f: f.assign(label=f["label"] + 5), "target labels not in the recorded schema"),
    ],
)
def test_drift_from_the_recorded_schema_is_stopped(tabular_frame, tabular_meta, change, expected):
    schema, _ = validate_dataset(tabular_frame, tabular_meta, None, PARAMS)
    meta = {**tabular_meta, "feature_columns": [c for c in change(tabular_frame).columns if c != "label"]}
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(change(tabular_frame), meta, schema, PARAMS)
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems


def test_wrong_pixel_count_for_the_image_shape(tabular_frame, tabular_meta):
    with pytest.raises(DataValidationError, match=r"image_shape \[8, 8, 1\] needs 64 pixel columns, found 2"):
        validate_dataset(tabular_frame, {**tabular_meta, "image_shape": [8, 8, 1]}, None, PARAMS)


def test_an_empty_text_column_is_named():
    import pandas as pd

    frame = pd.DataFrame({"text": ["", "  ", None, ""] * 10, "target": [0, 1] * 20})
    meta = {"target": "target", "task": "classification", "feature_columns": ["text"], "text_column": "text"}
    with pytest.raises(DataValidationError, match="text column 'text' is empty in every row"):
        validate_dataset(frame, meta, None, PARAMS)
