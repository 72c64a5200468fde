"""build_model turns every spec the tutorials teach into a compiled Keras model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerasflow.config import ConfigError, ModelParams
from tasks.model import DataSpec, build_model

IMAGES = DataSpec(input_shape=(8, 8, 1), task="classification", n_classes=10, scaling={"kind": "max", "scale": 1 / 16})
TABLE = DataSpec(
    input_shape=(3,), task="regression", scaling={"kind": "standard", "mean": [1, 2, 3], "variance": [1, 4, 9]}
)
BINARY = DataSpec(input_shape=(3,), task="classification", n_classes=2)


def spec(**values) -> ModelParams:
    return ModelParams.model_validate(values)


def test_cnn_sequential_has_scaling_and_softmax_head():
    model = build_model(
        spec(
            layers=[{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "max_pooling2d"}, {"type": "flatten"}]
        ),
        IMAGES,
    )
    assert isinstance(model, keras.Sequential)
    assert model.layers[0].name == "scaling" and model.output_shape == (None, 10)
    assert model.layers[-1].activation.__name__ == "softmax"
    probabilities = model.predict(np.full((2, 8, 8, 1), 16.0), verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_regression_mlp_normalizes_raw_input_and_has_linear_head():
    model = build_model(spec(layers=[{"type": "dense", "units": 4, "activation": "relu", "l2": 0.01}]), TABLE)
    assert model.output_shape == (None, 1) and model.loss == "mean_squared_error"
    normalized = model.get_layer("scaling")(np.array([[1.0, 2.0, 3.0]]))
    assert np.allclose(normalized, 0.0)
    assert len(model.losses) == 1  # the L2 penalty is in the model


def test_binary_classifier_has_one_sigmoid_unit():
    model = build_model(spec(layers=[{"type": "dense", "units": 4}]), BINARY)
    assert model.output_shape == (None, 1) and model.loss == "binary_crossentropy"


def test_functional_two_branches_merged():
    model = build_model(
        spec(
            api="functional",
            layers=[
                {"type": "dense", "units": 4, "name": "left", "inputs": ["input"]},
                {"type": "dense", "units": 6, "name": "right", "inputs": ["input"]},
                {"type": "concatenate", "name": "both", "inputs": ["left", "right"]},
                {"type": "dropout", "rate": 0.1},
            ],
        ),
        BINARY,
    )
    assert not isinstance(model, keras.Sequential)
    assert model.get_layer("both").output.shape[-1] == 10


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
def test_every_optimizer(optimizer, keras_class):
    model = build_model(spec(layers=[{"type": "dense", "units": 2}], optimizer=optimizer), BINARY)
    assert isinstance(model.optimizer, keras_class)
    assert np.isclose(float(model.optimizer.learning_rate), optimizer.get("learning_rate", 0.001))


def test_lstm_and_bidirectional_layers_build():
    sequences = DataSpec(input_shape=(5, 3), task="classification", n_classes=2)
    model = build_model(spec(layers=[{"type": "bidirectional", "layer": {"type": "lstm", "units": 4}}]), sequences)
    assert model.output_shape == (None, 1)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([], "at least one layer"),
        ([{"type": "dense", "unitz": 3}], r"model.layers\[0\] \(dense\)"),
        ([{"type": "conv2d", "filters": 2, "kernel_size": 3}], "flatten or global pooling"),
        (
            [{"type": "dense", "units": 3}, {"type": "dense", "units": 2, "activation": "nonsense"}],
            r"model.layers\[1\] \(dense\)",
        ),
    ],
)
def test_bad_specs_name_the_layer(layers, expected):
    with pytest.raises(ConfigError, match=expected):
        build_model(spec(layers=layers), IMAGES if layers and layers[0]["type"] == "conv2d" else BINARY)


def test_unknown_loss_is_named():
    with pytest.raises(ConfigError, match="model.loss"):
        build_model(spec(layers=[{"type": "dense", "units": 2}], loss="hinge_of_doom"), BINARY)


@pytest.mark.parametrize(
    ("loss", "data", "expected"),
    [
        ("binary_crossentropy", IMAGES, "needs 2 classes, but the data has 10"),
        ("sparse_categorical_crossentropy", BINARY, "needs 3 or more classes"),
        ("categorical_crossentropy", TABLE, "is for classification"),
    ],
)
def test_a_loss_that_cannot_fit_the_labels_is_named(loss, data, expected):
    layers = [{"type": "flatten"}] if data is IMAGES else [{"type": "dense", "units": 2}]
    with pytest.raises(ConfigError, match=f"model.loss '{loss}' {expected}"):
        build_model(spec(layers=layers, loss=loss), data)
