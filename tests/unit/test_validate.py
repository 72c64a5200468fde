"""Validation infers a schema, then stops every bad or drifted ingest with a named problem."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from kerasflow.config import ValidateParams
from kerasflow.records import RawDatasetInfo
from tasks.validate import DataValidationError, check_dataset, validate_dataset

PARAMS = ValidateParams(min_rows=10)


def test_first_ingest_infers_the_schema(tabular_frame, tabular_meta):
    schema, report = validate_dataset(tabular_frame, tabular_meta, None, PARAMS)
    assert report.ok and report.schema == "inferred" and report.passed_for(tabular_meta.md5)
    assert not report.passed_for("another md5")  # a report passes only the data it was made for
    assert schema.labels == ["0", "1"] and schema.columns["a"].kind == "numeric"


def test_a_later_ingest_within_the_schema_passes(tabular_frame, tabular_meta):
    schema, _ = validate_dataset(tabular_frame, tabular_meta, None, PARAMS)
    kept, report = validate_dataset(tabular_frame.sample(frac=0.5, random_state=1), tabular_meta, schema, PARAMS)
    assert report.ok and report.schema == "recorded" and kept is schema


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
    meta = replace(tabular_meta, feature_columns=[c for c in change(tabular_frame).columns if c != "label"])
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(change(tabular_frame), meta, schema, PARAMS)
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems


def test_wrong_pixel_count_for_the_image_shape(tabular_frame, tabular_meta):
    with pytest.raises(DataValidationError, match=r"image_shape \[8, 8, 1\] needs 64 pixel columns, found 2"):
        validate_dataset(tabular_frame, replace(tabular_meta, image_shape=[8, 8, 1]), None, PARAMS)


def test_an_empty_text_column_is_named():
    frame = pd.DataFrame({"text": ["", "  ", None, ""] * 10, "target": [0, 1] * 20})
    meta = RawDatasetInfo(
        **{"target": "target", "task": "classification", "feature_columns": ["text"], "text_column": "text"}
    )
    with pytest.raises(DataValidationError, match="text column 'text' is empty in every row"):
        validate_dataset(frame, meta, None, PARAMS)


def test_string_columns_are_categorical_features(tabular_frame, tabular_meta):
    frame = tabular_frame.assign(color=["red", "green", "blue"] * 20)
    meta = replace(tabular_meta, feature_columns=["a", "b", "color"])
    schema, report = validate_dataset(frame, meta, None, PARAMS)
    assert report.ok and schema.columns["color"].to_dict() == {"kind": "string", "nullable": False}
    # A later ingest where the column turned into numbers has drifted.
    with pytest.raises(DataValidationError, match="column 'color' is numeric, the recorded schema says string"):
        validate_dataset(frame.assign(color=1.0), meta, schema, PARAMS)


def test_text_that_is_all_number_like_is_a_category_not_a_broken_number(tabular_frame, tabular_meta):
    zip_codes = ["02134", "10001", "94105"] * 20  # kept as strings (e.g. in Parquet), leading zeros matter
    frame = tabular_frame.assign(zip=zip_codes)
    meta = replace(tabular_meta, feature_columns=["a", "b", "zip"])
    assert check_dataset(frame, meta, PARAMS) == []


@pytest.mark.parametrize(
    ("strings", "refused"),
    [(1, True), (6, True), (7, False), (60, False)],  # up to 10% strings: a broken numeric column
)
def test_a_mostly_numeric_column_with_a_few_strings_is_still_refused(tabular_frame, tabular_meta, strings, refused):
    frame = tabular_frame.copy()
    frame["a"] = frame["a"].astype(object)
    frame.loc[: strings - 1, "a"] = "twelve"
    problems = check_dataset(frame, tabular_meta, PARAMS)
    assert any("column 'a' must be numeric" in problem and "twelve" in problem for problem in problems) is refused


def _with_missing(frame, column, rows):
    frame = frame.copy()
    frame.loc[: rows - 1, column] = np.nan if pd.api.types.is_numeric_dtype(frame[column]) else None
    return frame


@pytest.mark.parametrize(
    ("column", "missing", "allowed", "expected"),
    [
        ("b", 1, 0.0, "column 'b' has 1 missing (NaN) value(s) (validate.max_missing_fraction is 0.0; raise it"),
        ("b", 6, 0.1, None),  # 10% of 60 rows: the model imputes them
        ("b", 7, 0.1, "column 'b' has 7 missing (NaN) value(s) (validate.max_missing_fraction is 0.1;"),
        ("color", 3, 0.1, None),
        ("color", 3, 0.0, "column 'color' has 3 missing (NaN) value(s)"),
        ("b", 60, 0.9, "column 'b' has 60 missing (NaN) value(s)"),  # a column with no values at all
    ],
)
def test_missing_values_up_to_max_missing_fraction(tabular_frame, tabular_meta, column, missing, allowed, expected):
    frame = _with_missing(tabular_frame.assign(color=["red", "blue"] * 30), column, missing)
    meta = replace(tabular_meta, feature_columns=["a", "b", "color"])
    params = ValidateParams(min_rows=10, max_missing_fraction=allowed)
    problems = check_dataset(frame, meta, params)
    if expected is None:
        assert problems == []
        schema, _ = validate_dataset(frame, meta, None, params)
        assert schema.columns[column].nullable is True
    else:
        assert any(expected in problem for problem in problems), problems
    if missing == len(frame):
        assert not any("raise it" in problem for problem in problems)  # raising the limit would not help


def test_image_data_never_allows_missing_pixels():
    frame = pd.DataFrame(np.ones((40, 4)), columns=["p0", "p1", "p2", "p3"]).assign(label=[0, 1] * 20)
    frame.loc[0, "p2"] = np.nan
    meta = RawDatasetInfo(**{"target": "label", "task": "classification", "feature_columns": ["p0", "p1", "p2", "p3"]})
    params = ValidateParams(min_rows=10, max_missing_fraction=0.5)
    assert check_dataset(frame, meta, params) == []  # columns: imputed
    problems = check_dataset(frame, replace(meta, image_shape=[2, 2, 1]), params)
    assert any("column 'p2' has 1 missing (NaN) value(s)" in problem for problem in problems), problems


def test_image_pixels_must_be_numbers():
    frame = pd.DataFrame(np.ones((40, 4)), columns=["p0", "p1", "p2", "p3"]).assign(label=[0, 1] * 20)
    frame["p1"] = ["dark", "light"] * 20  # would be a categorical column in a table
    meta = RawDatasetInfo(**{"target": "label", "task": "classification", "feature_columns": ["p0", "p1", "p2", "p3"]})
    assert check_dataset(frame, meta, PARAMS) == []
    problems = check_dataset(frame, replace(meta, image_shape=[2, 2, 1]), PARAMS)
    assert any("column 'p1' must be numeric" in problem for problem in problems), problems


def test_a_text_column_may_miss_some_values():
    frame = pd.DataFrame({"text": ["good film", None, "bad plot", ""] * 10, "target": [0, 1] * 20})
    meta = RawDatasetInfo(
        **{"target": "target", "task": "classification", "feature_columns": ["text"], "text_column": "text"}
    )
    _, report = validate_dataset(frame, meta, None, PARAMS)
    assert report.ok


def test_a_recorded_schema_knows_its_source(tmp_path, caplog):
    """Another source gets a schema of its own, said in one line; the same source with a changed range is refused,
    naming the user's file and the one command that accepts the change. (Bringing your own CSV into the project
    once failed against the committed digits schema, naming the internal dataset.parquet.)"""
    import logging

    from flows.stages import Context
    from flows.stages import validate as stage
    from kerasflow.config import load_params
    from kerasflow.layout import Layout
    from tasks.ingest import ingest_dataset

    layout = Layout(tmp_path)
    (tmp_path / "params.yaml").write_text("validate: {min_rows: 10}\n")
    context = Context(layout, tmp_path)

    def ingest(params):
        ingest_dataset(params.ingest, params.seed, layout.raw_data, layout.raw_meta)

    digits = load_params(tmp_path / "params.yaml")
    ingest(digits)
    stage.run(digits, context)
    assert json.loads(layout.schema.read_text())["source"] == "sklearn:digits"

    frame = pd.DataFrame({"area": np.linspace(50, 150, 40), "price": np.linspace(1, 2, 40)})
    frame.to_csv(tmp_path / "houses.csv", index=False)
    (tmp_path / "params.yaml").write_text(
        "validate: {min_rows: 10}\ningest: {source: file, path: houses.csv, target: price}\n"
    )
    houses = load_params(tmp_path / "params.yaml")
    ingest(houses)
    with caplog.at_level(logging.INFO):
        report = stage.run(houses, context)
    assert report.schema == "new source" and report.replaced_schema_of == "sklearn:digits"
    assert "was recorded for sklearn:digits; this data is file:" in caplog.text
    assert json.loads(layout.schema.read_text())["source"].endswith("houses.csv")

    frame.assign(area=frame["area"] * 10).to_csv(tmp_path / "houses.csv", index=False)
    ingest(houses)
    with pytest.raises(DataValidationError) as raised:
        stage.run(houses, context)
    message = str(raised.value)
    assert message.startswith(str(tmp_path / "houses.csv")) and "column 'area' ranges over" in message
    assert "run `kerasflow accept-schema`" in message and "dataset.parquet" not in message
    stage.accept(houses, layout)  # what `kerasflow accept-schema` does
    assert stage.run(houses, context).ok


def test_a_folder_of_one_class_is_named_as_a_folder(tmp_path):
    frame = pd.DataFrame({"path": [f"cats/{index}.png" for index in range(30)], "target": ["cats"] * 30})
    info = RawDatasetInfo(
        target="target", task="classification", feature_columns=["path"], image_shape=[8, 8, 3], image_root="/x"
    )
    problems = check_dataset(frame, info, PARAMS)
    assert problems == ["the folder has 1 class sub-folder(s) with images; classification needs at least 2"]
