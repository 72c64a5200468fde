"""Model inputs: what each raw column is, and the constants adapted on the training split only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.config import PreprocessParams
from kerasflow.model_interface import MISSING, InputColumn, ModelInputs, to_model_inputs
from kerasflow.records import FittedInputs, ImageScaling, NumericFit, RawDatasetInfo, TargetScaling, TextFit
from tasks.features import (
    adapt_inputs,
    describe_inputs,
    feature_matrix,
    input_name,
    raw_example,
    target_scaling,
)
from tests.unit.helpers import mixed_frame


def meta_for(frame: pd.DataFrame, **extra) -> RawDatasetInfo:
    return RawDatasetInfo(target="y", task="classification", feature_columns=[c for c in frame if c != "y"], **extra)


def kinds(inputs: ModelInputs) -> dict[str, str]:
    return {entry.column: entry.kind for entry in inputs.columns}


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([1.5, 2.0, np.nan, 4.0], "numeric"),
        ([1, 2, 3, 4], "numeric"),
        ([True, False, True, False], "numeric"),
        (["red", "blue", None, "red"], "categorical"),
        (pd.Series(["a", "b", "a", "b"], dtype="category"), "categorical"),
    ],
)
def test_each_column_kind_is_described(values, kind):
    frame = pd.DataFrame({"col": values, "y": [0, 1, 0, 1]})
    inputs = describe_inputs(frame, meta_for(frame), PreprocessParams())
    # Numeric columns share the one matrix input "numeric"; a string column has an input of its own.
    expected_input = "numeric" if kind == "numeric" else "col"
    assert inputs == ModelInputs("columns", (InputColumn("col", expected_input, kind),))


def test_text_column_and_images_are_described():
    frame = mixed_frame(rows=20)
    inputs = describe_inputs(
        frame, meta_for(frame.rename(columns={"label": "y"}), text_column="note"), PreprocessParams()
    )
    assert kinds(inputs) == {"size": "numeric", "color": "categorical", "note": "text"}
    pixels = pd.DataFrame(np.zeros((4, 12)), columns=[f"p{i}" for i in range(12)]).assign(y=[0, 1, 0, 1])
    image = describe_inputs(pixels, meta_for(pixels, image_shape=[2, 2, 3]), PreprocessParams())
    assert image == ModelInputs.images([2, 2, 3])
    x = feature_matrix(pixels, meta_for(pixels, image_shape=[2, 2, 3]), image)
    assert x.shape == (4, 2, 2, 3) and x.dtype == np.float32


def test_categorical_columns_forces_a_numeric_column_to_categories():
    frame = pd.DataFrame({"zip": [10, 20, 30, 10], "area": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    assert kinds(describe_inputs(frame, meta_for(frame), PreprocessParams())) == {"zip": "numeric", "area": "numeric"}
    forced = describe_inputs(frame, meta_for(frame), PreprocessParams(categorical_columns=["zip"]))
    assert kinds(forced) == {"zip": "categorical", "area": "numeric"}
    # The numbers become category names, looked up as strings.
    assert to_model_inputs(frame[["zip", "area"]], forced)["zip"].ravel().tolist() == ["10", "20", "30", "10"]


def test_unknown_categorical_columns_are_named():
    frame = pd.DataFrame({"zip": [10, 20], "y": [0, 1]})
    with pytest.raises(ValueError, match=r"preprocess.categorical_columns names \['zap'\]"):
        describe_inputs(frame, meta_for(frame), PreprocessParams(categorical_columns=["zap"]))


def test_only_one_text_column_is_supported():
    frame = pd.DataFrame({"a": ["x y", "z"], "y": [0, 1]})
    inputs = describe_inputs(frame, meta_for(frame, text_column="a"), PreprocessParams())
    assert kinds(inputs) == {"a": "text"}
    # A second "text" column is categorical, never a second vectorizer.
    two = frame.assign(b=["p q", "r"])
    assert kinds(describe_inputs(two, meta_for(two, text_column="a"), PreprocessParams())) == {
        "a": "text",
        "b": "categorical",
    }


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["price ($)"], ["price____"]),
        (["a b", "a_b", "a/b"], ["a_b", "a_b_2", "a_b_3"]),
        (["_hidden", "9lives"], ["c__hidden", "c_9lives"]),
        (["class", "lambda"], ["c_class", "c_lambda"]),  # SavedModel signatures make them Python parameters
        ([""], ["c_"]),
    ],
)
def test_input_names_are_safe_and_unique(columns, expected):
    taken: set[str] = set()
    assert [input_name(column, taken) for column in columns] == expected


def test_raw_example_is_what_a_caller_sends():
    frame = pd.DataFrame({"count": [1, 2, 3, 4, 5, 6], "color": ["a", None, "b", "a", "b", "a"]})
    inputs = describe_inputs(frame.assign(y=0), meta_for(frame.assign(y=0)), PreprocessParams())
    example = raw_example(frame, inputs, rows=3)
    assert len(example) == 3
    assert example["count"].dtype == np.float64  # a missing number at serving time still fits the signature
    assert example["color"].tolist() == ["a", MISSING, "b"]
    images = np.ones((10, 2, 2, 1), dtype="float64")
    image_example = raw_example(images, ModelInputs.images([2, 2, 1]))
    assert image_example.shape == (5, 2, 2, 1) and image_example.dtype == np.float32


def test_adapt_uses_the_training_split_only():
    train = pd.DataFrame({"size": [1.0, 2.0, np.nan, 3.0], "color": ["red", "red", "blue", None]})
    test = pd.DataFrame({"size": [100.0, 200.0], "color": ["violet", "violet"]})
    params = PreprocessParams()
    whole = pd.concat([train, test], ignore_index=True)
    inputs = describe_inputs(whole.assign(y=0), meta_for(whole.assign(y=0)), params)
    fitted = adapt_inputs(inputs, train, params)
    numeric = fitted.numeric["size"]
    # The fill is the training mean of the values present; the normalization is fitted after imputing.
    assert numeric.fill == pytest.approx(2.0)
    assert numeric.mean == pytest.approx(2.0) and numeric.variance == pytest.approx(0.5)
    assert numeric.fill != pytest.approx(float(whole["size"].mean()))
    vocabulary = fitted.categorical["color"]
    assert vocabulary[0] == "red" and set(vocabulary) == {"red", "blue", MISSING}
    assert "violet" not in vocabulary  # a category only in the test split is out of vocabulary
    everything = adapt_inputs(inputs, whole, params)
    assert "violet" in everything.categorical["color"]


def test_adapted_text_vocabulary_comes_from_the_training_rows():
    params = PreprocessParams.model_validate({"text": {"max_tokens": 50, "sequence_length": 7, "standardize": "lower"}})
    frame = pd.DataFrame({"note": ["Great Item", "great thing", "dull item", "Unseen words here"]})
    inputs = describe_inputs(frame.assign(y=0), meta_for(frame.assign(y=0), text_column="note"), params)
    fitted = adapt_inputs(inputs, frame.head(3), params)
    text = fitted.text["note"]
    assert set(text.vocabulary) == {"great", "item", "thing", "dull"}  # lower-cased, no padding / OOV tokens
    assert text.sequence_length == 7 and text.standardize == "lower"
    assert fitted.vocabulary_size() == 4 + 2


def test_max_categories_keeps_the_most_frequent():
    train = pd.DataFrame({"color": ["red"] * 5 + ["blue"] * 3 + ["green"]})
    params = PreprocessParams(max_categories=2)
    inputs = describe_inputs(train.assign(y=0), meta_for(train.assign(y=0)), params)
    assert adapt_inputs(inputs, train, params).categorical["color"] == ["red", "blue"]


@pytest.mark.parametrize(("scaling", "normalized"), [("auto", True), ("standard", True), ("none", False)])
def test_numeric_scaling_follows_preprocess_scaling(scaling, normalized):
    train = pd.DataFrame({"a": [1.0, 1.0, 1.0]})  # constant: the variance stays 1, never 0
    params = PreprocessParams(scaling=scaling)
    inputs = describe_inputs(train.assign(y=0), meta_for(train.assign(y=0)), params)
    numeric = adapt_inputs(inputs, train, params).numeric["a"]
    assert numeric.fill == 1.0
    assert numeric == (NumericFit(1.0, mean=1.0, variance=1.0) if normalized else NumericFit(1.0))


def test_max_scaling_of_columns_divides_by_the_largest_absolute_training_value():
    train = pd.DataFrame({"a": [-8.0, 2.0, np.nan], "b": [0.0, 0.0, 0.0]})
    params = PreprocessParams(scaling="max")
    inputs = describe_inputs(train.assign(y=0), meta_for(train.assign(y=0)), params)
    numeric = adapt_inputs(inputs, train, params).numeric
    assert numeric["a"].mean == 0.0 and numeric["a"].variance == 64.0
    assert numeric["b"].variance == 1.0  # an all-zero column is left as it is


@pytest.mark.parametrize("scaling", ["auto", "max", "standard", "none"])
def test_image_scaling_is_fitted_on_the_training_images(scaling):
    train = np.array([0.0, 2.0, 4.0, 8.0], dtype="float32").reshape(2, 2, 1, 1)
    fitted = adapt_inputs(ModelInputs.images([2, 1, 1]), train, PreprocessParams(scaling=scaling))
    expected = {
        "auto": ImageScaling("max", scale=1 / 8),
        "max": ImageScaling("max", scale=1 / 8),
        "standard": ImageScaling("standard", mean=[2.0, 5.0], variance=[4.0, 9.0]),  # per pixel
        "none": ImageScaling("none"),
    }[scaling]
    found = fitted.image_scaling
    assert found.kind == expected.kind and found.scale == pytest.approx(expected.scale)
    assert (found.mean, found.variance) == (pytest.approx(expected.mean), pytest.approx(expected.variance))


def test_vocabulary_size_for_categories_and_for_none():
    assert FittedInputs(categorical={"a": ["x", "y"], "b": ["z"]}).vocabulary_size() == 3
    assert FittedInputs(numeric={"a": NumericFit(0.0)}).vocabulary_size() is None
    with_text = FittedInputs(categorical={"a": ["x"] * 9}, text={"t": TextFit(["w"] * 4, 5, "lower")})
    assert with_text.vocabulary_size() == 6 and with_text.vocabulary_size("categorical") == 10


@pytest.mark.parametrize(
    ("y", "task", "scale", "expected"),
    [
        ([10.0, 20.0, 30.0, 40.0], "regression", True, TargetScaling(25.0, float(np.std([10, 20, 30, 40])))),
        ([5.0, 5.0, 5.0], "regression", True, TargetScaling(5.0, 1.0)),  # constant: never divide by zero
        ([10.0, 20.0], "regression", False, None),
        ([0, 1, 1, 0], "classification", True, None),
    ],
)
def test_target_scaling_comes_from_the_training_labels(y, task, scale, expected):
    scaling = target_scaling(np.array(y, dtype="float32"), task, PreprocessParams(scale_target=scale))
    if expected is None:
        assert scaling is None
    else:
        assert (scaling.mean, scaling.std) == (pytest.approx(expected.mean), pytest.approx(expected.std))


def test_constants_fitted_batch_by_batch_equal_keras_adapt_on_all_rows():
    """The streaming fit (batches of 17 rows) gives what Keras' own layers adapt to on the whole training split
    in memory: the numeric fill, mean and variance, the category vocabulary and the text vocabulary."""
    import keras

    from tasks.features import InputFitter

    frame = mixed_frame(rows=400, seed=3)
    frame.loc[::7, "color"] = "teal"  # a rarer category, so the vocabulary order is by frequency
    info = RawDatasetInfo(
        target="label", task="classification", feature_columns=["size", "color", "note"], text_column="note"
    )
    params = PreprocessParams(max_categories=3, text={"max_tokens": 12})
    inputs = describe_inputs(frame, info, params)
    fitter = InputFitter(inputs, params)
    for start in range(0, len(frame), 17):
        fitter.add(frame.iloc[start : start + 17])
    fitted = fitter.fitted()

    size = frame["size"].to_numpy(dtype="float32")
    filled = np.where(np.isnan(size), np.nanmean(size), size).reshape(-1, 1)
    normalization = keras.layers.Normalization(axis=-1)
    normalization.adapt(filled)
    fit = fitted.numeric["size"]
    assert fit.fill == pytest.approx(float(np.nanmean(size)), rel=1e-5)
    assert fit.mean == pytest.approx(float(np.asarray(normalization.mean).ravel()[0]), rel=1e-5)
    assert fit.variance == pytest.approx(float(np.asarray(normalization.variance).ravel()[0]), rel=1e-5)

    lookup = keras.layers.StringLookup(max_tokens=params.max_categories + 1, num_oov_indices=1)
    lookup.adapt(frame["color"].astype("string").fillna(MISSING).to_numpy(dtype=object).astype(str).reshape(-1, 1))
    assert fitted.categorical["color"] == [str(value) for value in lookup.get_vocabulary()[1:]]

    vectorize = keras.layers.TextVectorization(max_tokens=12, output_sequence_length=params.text.sequence_length)
    vectorize.adapt(frame["note"].astype(str).to_numpy())
    assert fitted.text["note"].vocabulary == [str(value) for value in vectorize.get_vocabulary()[2:]]
