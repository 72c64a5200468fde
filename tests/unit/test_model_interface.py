"""The one function from raw rows to model inputs, and the named predictions, wherever the rows come from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.model_interface import (
    MISSING,
    InputColumn,
    ModelConfig,
    ModelInputError,
    ModelInputs,
    model_outputs,
    prediction_frame,
    to_model_inputs,
)

COLUMNS = ModelInputs(
    "columns",
    (
        InputColumn("size", "numeric", "numeric"),
        InputColumn("color", "color", "categorical"),
        InputColumn("count", "numeric", "numeric"),
    ),
)


def test_columns_become_one_numeric_matrix_and_one_input_per_string_column():
    frame = pd.DataFrame({"size": [1.0, np.nan], "color": ["red", None], "count": [3, 4]})
    values = to_model_inputs(frame, COLUMNS)
    assert set(values) == {"numeric", "color"}
    # The numeric columns side by side, in column order: size, count.
    assert values["numeric"].dtype == np.float32 and values["numeric"].shape == (2, 2)
    assert values["numeric"][0].tolist() == [1.0, 3.0] and np.isnan(values["numeric"][1, 0])  # the model imputes
    assert values["color"].shape == (2, 1) and values["color"].ravel().tolist() == ["red", MISSING]


@pytest.mark.parametrize(
    "data",
    [
        [{"size": "1.5", "color": "red", "count": 2}, {"size": "", "color": None, "count": None}],
        {"size": ["1.5", None], "color": ["red", None], "count": [2, np.nan]},
        [[1.5, "red", 2], [None, None, None]],
    ],
    ids=["records", "dict of columns", "rows in column order"],
)
def test_numbers_as_text_and_missing_values_read_the_same_from_any_shape(data):
    values = to_model_inputs(data, COLUMNS)
    assert values["numeric"][0].tolist() == [1.5, 2.0] and np.isnan(values["numeric"][1]).all()
    assert values["color"].ravel().tolist() == ["red", MISSING]


def test_text_in_a_numeric_column_names_the_column_and_the_row():
    frame = pd.DataFrame({"size": ["1.5", "2", "n/a", "x"], "color": "red", "count": 1}, index=[10, 11, 12, 13])
    with pytest.raises(ModelInputError, match=r"column 'size', row 12: 'n/a' is not a number \(2 such value"):
        to_model_inputs(frame, COLUMNS)


def test_a_missing_column_is_named():
    with pytest.raises(ModelInputError, match=r"input column\(s\) \['count'\] are missing"):
        to_model_inputs(pd.DataFrame({"size": [1.0], "color": ["red"]}), COLUMNS)


def test_images_from_arrays_pixel_columns_or_a_named_tensor():
    inputs = ModelInputs.images([2, 2, 1])
    images = np.arange(8, dtype="int64").reshape(2, 2, 2, 1)
    for data in (images, pd.DataFrame(images.reshape(2, 4)), {"image": images}):
        values = to_model_inputs(data, inputs)
        assert values.dtype == np.float32 and values.shape == (2, 2, 2, 1) and values[1, 1, 1, 0] == 7
    with pytest.raises(ModelInputError, match=r"do not fit the model's input shape \(2, 2, 1\)"):
        to_model_inputs(np.zeros((2, 3, 3, 1)), inputs)


@pytest.mark.parametrize(
    ("classes", "outputs", "labels"),
    [
        ([0, 1], [[0.2], [0.7]], [0, 1]),
        (["no", "yes"], [[0.2], [0.7]], ["no", "yes"]),
        ([3, 5, 7], [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], [5, 3]),
    ],
)
def test_predictions_are_named_and_labels_keep_the_classes_type(classes, outputs, labels):
    config = ModelConfig("classification", COLUMNS, classes, threshold=0.5)
    frame = prediction_frame(np.array(outputs), config)
    assert frame["label"].tolist() == labels
    # Integer classes give an integer label column (the signature's long), text classes text.
    assert pd.api.types.is_integer_dtype(frame["label"]) is isinstance(classes[0], int)
    assert list(frame.columns) == ["label", *(f"probability_{label}" for label in classes)]
    assert np.allclose(frame.filter(like="probability_").sum(axis=1), 1.0)
    np.testing.assert_allclose(model_outputs(frame, config), np.array(outputs), rtol=1e-6)


def test_the_binary_threshold_decides_the_label_and_regression_is_one_column():
    config = ModelConfig("classification", COLUMNS, ["no", "yes"], threshold=0.8)
    assert prediction_frame(np.array([[0.7], [0.9]]), config)["label"].tolist() == ["no", "yes"]
    regression = prediction_frame(np.array([[1.5], [2.5]]), ModelConfig("regression", COLUMNS))
    assert regression.to_dict("list") == {"prediction": [1.5, 2.5]}


def test_config_round_trips_through_json_shaped_dicts():
    config = ModelConfig("classification", COLUMNS, [0, 1], 0.3, extra={"name": "m"})
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelInputs.from_dict(ModelInputs.images([8, 8, 1]).to_dict()) == ModelInputs.images((8, 8, 1))
