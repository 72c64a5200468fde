"""build_model turns every spec the tutorials teach into a compiled functional Keras model that takes raw input."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kerasflow.config import ConfigError, ModelParams, PreprocessParams
from kerasflow.model_interface import to_model_inputs
from kerasflow.records import FittedInputs, PreprocessState, TargetScaling
from tasks.datasets import predict
from tasks.model import build_model, export_for_serving
from tests.unit.helpers import digit_images, mixed_frame, model_state, prepare, prepare_images, review_frame

SMALL_TEXT = PreprocessParams.model_validate({"text": {"max_tokens": 200, "sequence_length": 12}})


def spec(**values) -> ModelParams:
    return ModelParams.model_validate(values)


@pytest.fixture(scope="module")
def images():
    x, y = digit_images(rows=20)
    y = np.arange(20) % 10  # ten classes
    return prepare_images(x, y)


@pytest.fixture(scope="module")
def table():
    """Regression on three numeric columns with known training means."""
    frame = pd.DataFrame({"a": [0.0, 2.0] * 10, "b": [1.0, 3.0] * 10, "c": [-1.0, 7.0] * 10})
    return prepare(frame.assign(target=np.arange(20.0)), "target", "regression")


@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"]).assign(label=[0, 1] * 15)
    return prepare(frame, "label", "classification")


@pytest.fixture(scope="module")
def mixed():
    """Numeric with NaN, categorical with None, and text; adapted on the first 100 rows only."""
    return prepare(mixed_frame(), "label", "classification", SMALL_TEXT, text_column="note", train_rows=100)


@pytest.fixture(scope="module")
def tabular():
    """The mixed data without its text column (a sequential model can take it)."""
    return prepare(mixed_frame().drop(columns="note"), "label", "classification", train_rows=100)


@pytest.fixture(scope="module")
def text():
    return prepare(review_frame(80), "sentiment", "classification", SMALL_TEXT, text_column="review")


def test_cnn_on_images_has_scaling_and_softmax_head(images):
    model = build_model(
        spec(
            layers=[{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "max_pooling2d"}, {"type": "flatten"}]
        ),
        images.data,
    )
    assert isinstance(model, keras.Model) and model.name == "kerasflow_sequential"
    scaling = model.get_layer("scaling")
    assert isinstance(scaling, keras.layers.Rescaling) and scaling.scale == pytest.approx(1 / images.x.max())
    assert model.output_shape == (None, 10) and model.get_layer("output").activation.__name__ == "softmax"
    probabilities = model.predict(np.full((2, 8, 8, 1), 16.0), verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_regression_mlp_normalizes_raw_input_and_has_linear_head(table):
    model = build_model(spec(layers=[{"type": "dense", "units": 4, "activation": "relu", "l2": 0.01}]), table.data)
    assert model.output_shape == (None, 1) and model.loss == "mean_squared_error"
    assert model.get_layer("output").activation.__name__ == "linear"
    # The training means (1, 2, 3) normalize to zero inside the model.
    normalized = model.get_layer("scaling")(np.array([[1.0, 2.0, 3.0]], dtype="float32"))
    assert np.allclose(normalized, 0.0, atol=1e-6)
    assert len(model.losses) == 1  # the L2 penalty is in the model


def test_binary_classifier_has_one_sigmoid_unit(binary):
    model = build_model(spec(layers=[{"type": "dense", "units": 4}]), binary.data)
    assert model.output_shape == (None, 1) and model.loss == "binary_crossentropy"
    assert model.get_layer("output").activation.__name__ == "sigmoid"


def test_no_layers_is_a_linear_model(table):
    model = build_model(spec(layers=[]), table.data)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.name for layer in dense] == ["output"]
    assert model.count_params() == 3 + 1  # one weight per column and a bias; the scaling is constant
    assert model.trainable_weights == model.get_layer("output").trainable_weights


def test_functional_two_branches_merged(binary):
    model = build_model(
        spec(
            api="functional",
            layers=[
                {"type": "dense", "units": 4, "name": "left", "inputs": ["input"]},
                {"type": "dense", "units": 6, "name": "right", "inputs": ["numeric"]},
                {"type": "concatenate", "name": "both", "inputs": ["left", "right"]},
                {"type": "dropout", "rate": 0.1},
            ],
        ),
        binary.data,
    )
    assert model.name == "kerasflow_functional"
    assert model.get_layer("both").output.shape[-1] == 10


def test_functional_branches_start_from_text_and_features(mixed):
    model = build_model(
        spec(
            api="functional",
            layers=[
                {"type": "embedding", "output_dim": 4, "inputs": ["text"]},
                {"type": "global_average_pooling1d", "name": "words"},
                {"type": "dense", "units": 3, "name": "columns", "inputs": ["features"]},
                {"type": "concatenate", "inputs": ["words", "columns"]},
            ],
        ),
        mixed.data,
    )
    assert sorted(model.input) == ["color", "note", "numeric"]  # the numbers as one matrix, each string column
    assert model.input["note"].dtype == "string" and model.input["numeric"].dtype == "float32"
    # numeric (1) + one-hot colours (3 + missing + OOV): the `features` tensor.
    assert model.get_layer("columns").input.shape[-1] == 1 + len(mixed.fitted.categorical["color"]) + 1
    outputs = predict(model, mixed.x.head(4), mixed.inputs)
    assert outputs.shape == (4, 1) and np.isfinite(outputs).all()


@pytest.mark.parametrize(
    ("optimizer", "keras_class"),
    [
        ({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, keras.optimizers.SGD),
        ({"name": "adam"}, keras.optimizers.Adam),
        ({"name": "rmsprop", "momentum": 0.5}, keras.optimizers.RMSprop),
        ({"name": "adagrad"}, keras.optimizers.Adagrad),
        ({"name": "adadelta", "learning_rate": 1.0}, keras.optimizers.Adadelta),
    ],
)
def test_every_optimizer(binary, optimizer, keras_class):
    model = build_model(spec(layers=[{"type": "dense", "units": 2}], optimizer=optimizer), binary.data)
    assert isinstance(model.optimizer, keras_class)
    assert np.isclose(float(model.optimizer.learning_rate), optimizer.get("learning_rate", 0.001))


def test_text_model_takes_raw_strings_with_an_adapted_embedding(text):
    model = build_model(
        spec(
            layers=[
                {"type": "embedding", "output_dim": 8, "mask_zero": True, "name": "embed"},
                {"type": "bidirectional", "layer": {"type": "lstm", "units": 4}},
            ]
        ),
        text.data,
    )
    vocabulary = len(text.fitted.text["review"].vocabulary)
    assert model.get_layer("embed").input_dim == vocabulary + 2  # padding and OOV tokens
    assert isinstance(model.get_layer("vectorize_review"), keras.layers.TextVectorization)
    assert model.inputs[0].dtype == "string"
    raw = pd.DataFrame({"review": ["A wonderful, superb film!", "zzz unknown words", ""]})
    outputs = predict(model, raw, text.inputs)
    assert outputs.shape == (3, 1) and np.isfinite(outputs).all()


def test_an_explicit_embedding_input_dim_is_kept(text):
    model = build_model(
        spec(layers=[{"type": "embedding", "input_dim": 999, "output_dim": 2, "name": "embed"}, {"type": "flatten"}]),
        text.data,
    )
    assert model.get_layer("embed").input_dim == 999


def test_integer_categories_feed_an_embedding():
    params = PreprocessParams(categorical_encoding="integer")
    data = prepare(mixed_frame().drop(columns="note"), "label", "classification", params, train_rows=100)
    model = build_model(
        spec(
            api="functional",
            layers=[
                {"type": "embedding", "output_dim": 3, "inputs": ["categorical"], "name": "embed"},
                {"type": "flatten", "name": "colors"},
                {"type": "concatenate", "inputs": ["colors", "numeric"]},
            ],
        ),
        data.data,
    )
    assert model.get_layer("embed").input_dim == len(data.fitted.categorical["color"]) + 1
    assert np.isfinite(predict(model, data.x.head(5), data.inputs)).all()


def test_missing_numbers_become_the_training_mean(tabular):
    model = build_model(spec(layers=[{"type": "dense", "units": 4, "activation": "tanh"}]), tabular.data)
    fill = tabular.fitted.numeric["size"].fill
    assert fill == pytest.approx(float(tabular.x["size"].head(100).mean()))
    rows = pd.DataFrame({"size": [np.nan, fill, fill + 3.0], "color": ["red"] * 3})
    outputs = predict(model, rows, tabular.inputs).ravel()
    assert np.isfinite(outputs).all()
    assert outputs[0] == pytest.approx(outputs[1], abs=1e-6)  # NaN is imputed with the training mean
    assert outputs[2] != pytest.approx(outputs[1], abs=1e-4)  # and the number still matters


def test_an_unseen_category_goes_to_the_oov_slot(tabular):
    model = build_model(spec(layers=[]), tabular.data)
    lookup = model.get_layer("lookup_color")
    one_hot = np.asarray(lookup(np.array([["violet"], ["red"]])))
    assert one_hot[0, 0] == 1 and one_hot[0, 1:].sum() == 0  # index 0: out of vocabulary
    assert one_hot[1, 0] == 0 and one_hot[1].sum() == 1
    rows = pd.DataFrame({"size": [0.5] * 3, "color": ["violet", "never seen", "red"]})
    outputs = predict(model, rows, tabular.inputs).ravel()
    assert np.isfinite(outputs).all()
    assert outputs[0] == pytest.approx(outputs[1], abs=1e-6)  # every unseen category shares the OOV slot
    assert outputs[0] != pytest.approx(outputs[2], abs=1e-6)


@pytest.mark.parametrize("kind", ["tabular", "text"])
def test_saved_model_loads_in_safe_mode_with_identical_predictions(request, tmp_path, kind):
    prepared = request.getfixturevalue(kind)
    layers = (
        [{"type": "dense", "units": 4, "activation": "relu"}]
        if kind == "tabular"
        else [{"type": "embedding", "output_dim": 4}, {"type": "global_average_pooling1d"}]
    )
    model = build_model(spec(layers=layers), prepared.data)
    rows = prepared.x.head(8).copy()
    if kind == "tabular":  # missing values and an unseen category in the rows predicted on
        rows.loc[0, "size"] = np.nan
        rows.loc[1, "color"] = None
        rows.loc[2, "color"] = "violet"
    else:
        rows.loc[0, "review"] = "words the model never saw"
        rows.loc[1, "review"] = None
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    before, after = predict(model, rows, prepared.inputs), predict(loaded, rows, prepared.inputs)
    assert np.isfinite(before).all()
    np.testing.assert_array_equal(after, before)
    assert loaded(to_model_inputs(rows, prepared.inputs)).shape == (8, 1)


def test_augmentation_is_active_in_training_only(images):
    model = build_model(
        spec(
            augmentation=[
                {"type": "random_flip", "mode": "horizontal_and_vertical", "name": "flip"},
                {"type": "random_translation", "height_factor": 0.3, "width_factor": 0.3},
            ],
            layers=[{"type": "flatten"}],
        ),
        images.data,
    )
    keras.utils.set_random_seed(1)
    x = images.x[:6]
    scaled = np.asarray(model.get_layer("scaling")(x))
    augmented = keras.Model(model.input, model.get_layer("flip").output)
    np.testing.assert_array_equal(np.asarray(augmented(x, training=False)), scaled)  # identity at inference
    # A flip is drawn at random (it may leave a batch as it is), so a few training calls must change something.
    assert any(not np.allclose(np.asarray(augmented(x, training=True)), scaled) for _ in range(10))
    inference = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), inference)
    assert any(not np.allclose(np.asarray(model(x, training=True)), inference) for _ in range(10))


def test_categorical_crossentropy_takes_the_class_indices_the_pipeline_keeps(images):
    model = build_model(spec(layers=[{"type": "flatten"}], loss="categorical_crossentropy"), images.data)
    assert model.loss == "sparse_categorical_crossentropy"
    labels = np.arange(6) % images.data.n_classes
    history = model.fit(images.x[:6], labels, epochs=2, verbose=0)  # integer labels fit without one-hot
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    ("values", "prepared", "expected"),
    [
        ({"augmentation": [{"type": "random_flip"}]}, "binary", "need image data"),
        ({"backbone": {"name": "MobileNetV2"}}, "tabular", "need image data"),
        ({"layers": [{"type": "dense", "units": 2}]}, "mixed", "a sequential model takes only one of them"),
        (
            {"api": "functional", "layers": [{"type": "dense", "units": 2, "inputs": ["text"]}]},
            "binary",
            r"names \['text'\], which this data does not have; available: \['features', 'input', 'numeric'\]",
        ),
        ({"layers": [{"type": "embedding", "output_dim": 2}]}, "binary", r"\(embedding\): input_dim is required"),
    ],
)
def test_specs_that_do_not_fit_the_data_are_named(request, values, prepared, expected):
    with pytest.raises(ConfigError, match=expected):
        build_model(spec(**values), request.getfixturevalue(prepared).data)


def test_integer_categories_need_a_functional_spec():
    params = PreprocessParams(categorical_encoding="integer")
    data = prepare(mixed_frame().drop(columns="note"), "label", "classification", params)
    with pytest.raises(ConfigError, match="categorical_encoding 'integer' needs api: functional"):
        build_model(spec(layers=[{"type": "dense", "units": 2}]), data.data)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"layers": [{"type": "dense", "unitz": 3}]}, r"model.layers\[0\] \(dense\).*'unitz'"),
        ({"layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3}]}, "flatten or global pooling"),
        (
            {"layers": [{"type": "dense", "units": 3}, {"type": "dense", "units": 2, "activation": "nonsense"}]},
            r"model.layers\[1\] \(dense\).*nonsense",
        ),
        ({"augmentation": [{"type": "random_rotation"}]}, r"model.augmentation\[0\] \(random_rotation\)"),
        ({"layers": [{"type": "bidirectional"}, {"type": "flatten"}]}, r"model.layers\[0\] \(bidirectional\)"),
    ],
)
def test_bad_specs_name_the_layer(images, values, expected):
    with pytest.raises(ConfigError, match=expected):
        build_model(spec(**values), images.data)


def test_unknown_loss_is_named(binary):
    with pytest.raises(ConfigError, match="model.loss: Keras does not know 'hinge_of_doom'"):
        build_model(spec(layers=[{"type": "dense", "units": 2}], loss="hinge_of_doom"), binary.data)


@pytest.mark.parametrize(
    ("loss", "data", "expected"),
    [
        ("binary_crossentropy", "images", "needs 2 classes, but the data has 10"),
        ("sparse_categorical_crossentropy", "binary", "needs 3 or more classes"),
        ("categorical_crossentropy", "table", "is for classification"),
    ],
)
def test_a_loss_that_cannot_fit_the_labels_is_named(request, loss, data, expected):
    layers = [{"type": "flatten"}] if data == "images" else [{"type": "dense", "units": 2}]
    with pytest.raises(ConfigError, match=f"model.loss '{loss}' {expected}"):
        build_model(spec(layers=layers, loss=loss), request.getfixturevalue(data).data)


def test_the_output_width_from_the_preprocessing_state(binary):
    common = {"inputs": binary.inputs, "target": "y", "feature_columns": [], "rows": {}, "seed": 0, "data_md5": "x"}
    state = PreprocessState(task="classification", classes=["no", "maybe", "yes"], fitted=binary.fitted, **common)
    assert (state.n_classes, state.output_units, state.fitted) == (3, 3, binary.fitted)
    two = PreprocessState(task="classification", classes=["no", "yes"], **common)
    assert (two.n_classes, two.output_units) == (2, 1)
    regression = PreprocessState(task="regression", **common)
    assert (regression.n_classes, regression.output_units, regression.fitted) == (0, 1, FittedInputs())


@pytest.mark.parametrize("column", ["output", "features"])
def test_a_column_named_like_an_internal_layer_still_builds(column):
    frame = pd.DataFrame({column: np.arange(10.0), "other": ["a", "b"] * 5, "label": [0, 1] * 5})
    data = prepare(frame, "label", "classification")
    model = build_model(spec(), data.data)
    assert np.isfinite(predict(model, data.x, data.inputs)).all()


def test_an_embedding_of_categories_beside_a_text_column_covers_every_category():
    frame = mixed_frame(rows=120).assign(city=[f"city{index % 40}" for index in range(120)])
    params = PreprocessParams.model_validate({"categorical_encoding": "integer", "text": {"sequence_length": 6}})
    data = prepare(frame, "label", "classification", params, text_column="note")
    model = build_model(
        spec(
            api="functional",
            layers=[
                {"type": "embedding", "output_dim": 2, "inputs": ["categorical"], "name": "places"},
                {"type": "flatten"},
            ],
        ),
        data.data,
    )
    outputs = predict(model, data.x, data.inputs)
    assert np.isfinite(outputs).all()
    assert model.get_layer("places").input_dim >= len(data.fitted.categorical["city"]) + 1


def test_a_scaled_regression_target_is_mapped_back_by_the_last_layer(table):
    fitted = replace(table.fitted, target=TargetScaling(mean=1000.0, std=50.0))
    model = build_model(spec(layers=[]), model_state(table.inputs, "regression", 0, fitted))
    scaling = model.get_layer("target_scaling")
    assert isinstance(scaling, keras.layers.Rescaling) and model.layers[-1] is scaling
    output = model.get_layer("output")
    output.set_weights([np.zeros_like(weight) for weight in output.get_weights()])
    np.testing.assert_allclose(predict(model, table.x.head(3), table.inputs), 1000.0)  # zero in std units: the mean
    output.set_weights([np.zeros((3, 1)), np.ones(1)])
    np.testing.assert_allclose(predict(model, table.x.head(3), table.inputs), 1050.0)  # one std above it
    unscaled = build_model(spec(layers=[]), table.data)
    assert "target_scaling" not in [layer.name for layer in unscaled.layers]


@pytest.mark.parametrize("kind", ["images", "mixed"])
def test_the_serving_export_predicts_like_the_model_at_inference(request, tmp_path, kind):
    prepared = request.getfixturevalue(kind)
    if kind == "images":
        values = {"augmentation": [{"type": "random_flip"}, {"type": "gaussian_noise", "stddev": 0.5}]}
        values["layers"] = [{"type": "flatten"}]
    else:
        values = {
            "api": "functional",
            "layers": [
                {"type": "embedding", "output_dim": 4, "inputs": ["text"]},
                {"type": "global_average_pooling1d", "name": "words"},
                {"type": "concatenate", "inputs": ["words", "features"]},
            ],
        }
    model = build_model(spec(**values), prepared.data)
    export_for_serving(model, tmp_path / "saved_model", prepared.inputs)
    exported = tf.saved_model.load(str(tmp_path / "saved_model"))
    rows = prepared.x[:6] if kind == "images" else prepared.x.head(6)
    features = to_model_inputs(rows, prepared.inputs)
    served = np.asarray(
        exported.serve(features if kind == "images" else {k: tf.constant(v) for k, v in features.items()})
    )
    # Augmentation and noise are off: the export is the model in inference mode.
    np.testing.assert_allclose(served, np.asarray(model(features, training=False)), atol=1e-6)
    np.testing.assert_allclose(served, predict(model, rows, prepared.inputs), atol=1e-6)


@pytest.mark.parametrize("kind", ["table", "binary", "images"])
def test_the_loss_from_the_outputs_is_the_one_evaluate_reports(request, kind):
    from tasks.datasets import make_dataset
    from tasks.model import compiled_loss
    from tasks.preprocess import Split

    prepared = request.getfixturevalue(kind)
    dense = {"type": "dense", "units": 4, "activation": "relu", "l2": 0.05}
    layers = [{"type": "flatten"}, dense] if kind == "images" else [dense]
    data = prepared.data
    if kind == "table":  # in standard deviations, the loss weighted to match
        data = model_state(prepared.inputs, "regression", 0, replace(prepared.fitted, target=TargetScaling(9.5, 5.8)))
    model = build_model(spec(layers=layers), data)
    source = Split(prepared.x, prepared.y)
    outputs = predict(model, prepared.x, prepared.inputs)
    evaluated = model.evaluate(make_dataset(source, prepared.inputs, 7), verbose=0, return_dict=True)["loss"]
    assert compiled_loss(model, prepared.y, outputs) == pytest.approx(evaluated, rel=1e-5)
    assert model.losses  # the regularization is part of both
    # Confidently wrong outputs cost more: the outputs and the labels count, not only the regularization.
    if kind == "table":
        wrong = outputs + 50.0
    elif kind == "binary":
        wrong = np.where(prepared.y[:, None] == 1, 0.01, 0.99).astype("float32")
    else:
        wrong = np.full_like(outputs, 0.01)
        wrong[np.arange(len(wrong)), (prepared.y + 1) % wrong.shape[1]] = 0.91
    assert compiled_loss(model, prepared.y, wrong) > evaluated + 0.5
