"""Transfer learning: a keras.applications backbone from a local weights file, frozen, then partly unfrozen.

Nothing is downloaded: every test here runs with keras' file download replaced by one that fails.
"""

from __future__ import annotations

import urllib.error

import keras
import numpy as np
import pytest

from kerasflow.config import BackboneParams, ConfigError, ModelParams, TrainParams
from tasks.backbone import BackboneWeightsError, backbone_features, make_backbone, unfreeze
from tasks.model import build_model, compile_model
from tasks.preprocess import Split
from tasks.train import train_model
from tests.unit.helpers import digit_images, prepare_images

NAME = "MobileNetV2"
SHAPE = (32, 32, 3)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """keras.applications fetch ImageNet weights with file_utils.get_file: make every fetch fail."""
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A randomly initialised backbone's weights, saved as a local file: (path, the weights)."""
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=SHAPE)
    path = tmp_path_factory.mktemp("backbone") / "mobilenet_v2_notop.weights.h5"
    base.save_weights(path)
    return path, base.get_weights()


def test_a_local_weights_file_is_loaded_and_the_backbone_is_frozen(weights_file):
    path, saved = weights_file
    backbone = make_backbone(BackboneParams(name=NAME, weights=str(path)), SHAPE)
    loaded = backbone.get_weights()
    assert len(loaded) == len(saved) and all(np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True))
    assert backbone.output_shape == (None, 1280)  # pooled: one vector per image
    assert backbone.trainable_weights == [] and len(backbone.non_trainable_weights) == len(saved)


def test_a_trainable_backbone_trains():
    backbone = make_backbone(BackboneParams(name=NAME, weights=None, trainable=True, pooling="max"), SHAPE)
    assert len(backbone.trainable_weights) > 100


def test_imagenet_weights_that_cannot_be_downloaded_are_a_transient_error():
    with pytest.raises(BackboneWeightsError) as raised:
        make_backbone(BackboneParams(name=NAME, weights="imagenet"), SHAPE)
    message = str(raised.value)
    assert raised.value.transient
    assert NAME in message and "ImageNet weights" in message and "name resolution" in message
    assert "set model.backbone.weights to its local path" in message


@pytest.mark.parametrize(
    ("name", "weights", "error", "expected"),
    [
        ("ResNet9000", None, ConfigError, r"'ResNet9000' is not supported; expected one of \["),
        (NAME, "missing.weights.h5", ConfigError, "missing.weights.h5: file not found"),
        (NAME, "weights.txt", ConfigError, r"model.backbone: MobileNetV2 with weights '.*weights.txt'"),
        (NAME, "corrupt.weights.h5", BackboneWeightsError, "corrupt.weights.h5: could not be loaded"),
    ],
)
def test_bad_backbone_settings_are_named(tmp_path, name, weights, error, expected):
    if weights:
        weights = str(tmp_path / weights)
        if "missing" not in weights:
            (tmp_path / weights).write_bytes(b"not a weights file")
    with pytest.raises(error, match=expected) as raised:
        make_backbone(BackboneParams(name=name, weights=weights), SHAPE)
    assert not getattr(raised.value, "transient", False)  # a broken local file does not heal on a retry


def test_images_need_one_or_three_channels():
    with pytest.raises(ConfigError, match="images have 2 channels; a backbone takes 1 .* or 3"):
        backbone_features(BackboneParams(name=NAME), keras.Input((32, 32, 2)))


def _head_on_backbone(spec: BackboneParams) -> keras.Model:
    """A small classifier on backbone_features, as build_model wires it."""
    image = keras.Input(SHAPE, name="image")
    return keras.Model(image, keras.layers.Dense(3, name="output")(backbone_features(spec, image)))


def test_unfreeze_needs_a_backbone():
    image = keras.Input((4,))
    with pytest.raises(ConfigError, match="fine_tune.epochs needs a model.backbone"):
        unfreeze(keras.Model(image, keras.layers.Dense(1)(image)), 3)


@pytest.mark.parametrize("last", [4, None])
@pytest.mark.slow
def test_unfreeze_makes_only_the_last_layers_trainable(last):
    model = _head_on_backbone(BackboneParams(name=NAME, weights=None))
    backbone = model.get_layer("backbone")
    assert backbone.trainable_weights == []  # frozen: only the head trains
    assert len(model.trainable_weights) == 2
    count = unfreeze(model, last)
    chosen = backbone.layers[-last:] if last else backbone.layers
    training = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert {layer.name for layer in training} <= {layer.name for layer in chosen}  # nothing before the last N
    convolutions = [
        layer for layer in chosen if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert convolutions and all(layer.trainable for layer in convolutions)
    # BatchNormalization stays frozen (an unfrozen one would run on batch statistics inside fit).
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in training)
    assert count == len(training)
    assert len(backbone.trainable_weights) == sum(len(layer.trainable_weights) for layer in training)
    assert len(model.trainable_weights) == 2 + len(backbone.trainable_weights)


def test_build_model_puts_a_frozen_backbone_under_the_head(weights_file, tmp_path):
    path, saved = weights_file
    x, y = digit_images(rows=6)  # 8x8 grayscale: made RGB and resized to the backbone's 32x32 minimum
    prepared = prepare_images(x, y)
    spec = ModelParams.model_validate(
        {
            "augmentation": [{"type": "random_flip", "mode": "horizontal"}],
            "backbone": {"name": NAME, "weights": str(path)},
            "layers": [{"type": "dropout", "rate": 0.2}],
        }
    )
    model = build_model(spec, prepared.data)
    names = [layer.name for layer in model.layers]
    assert {"grayscale_to_rgb", "backbone_resizing", "backbone_scaling", "backbone"} <= set(names)
    assert "scaling" not in names  # the backbone does its own input scaling on the raw image
    backbone = model.get_layer("backbone")
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), saved, strict=True))
    assert model.trainable_weights == model.get_layer("output").trainable_weights  # frozen backbone
    outputs = model.predict(x, verbose=0)
    assert outputs.shape == (6, 1) and np.isfinite(outputs).all()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), outputs, atol=1e-6)


@pytest.mark.slow
def test_fine_tuning_trains_only_the_unfrozen_backbone_layers(weights_file):
    """The mechanics of the two phases. (A randomly initialised backbone's features carry no signal to
    learn from, and ImageNet weights cannot be downloaded here; the other training tests check learning.)"""
    x = np.random.default_rng(0).uniform(0, 255, size=(8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 2
    prepared = prepare_images(x, y)
    spec = ModelParams.model_validate({"backbone": {"name": NAME, "weights": str(weights_file[0])}})
    model = build_model(spec, prepared.data, jit_compile=False)
    backbone = model.get_layer("backbone")
    first, last = backbone.get_layer("Conv1"), backbone.get_layer("Conv_1")
    before = {layer.name: layer.get_weights()[0].copy() for layer in (first, last)}
    head = model.get_layer("output").get_weights()[0].copy()
    calls = []

    def fine_tune(trained):
        # The head trained with the backbone frozen: its weights are still the file's.
        calls.append(
            {layer.name: np.array_equal(layer.get_weights()[0], before[layer.name]) for layer in (first, last)}
        )
        unfreeze(trained, 4)
        compile_model(trained, spec, prepared.data, jit_compile=False, learning_rate=0.01)

    params = TrainParams.model_validate(
        {
            "epochs": 1,
            "batch_size": 8,
            "checkpoint": False,
            "early_stopping": {"enabled": False},
            "fine_tune": {"epochs": 1},
        }
    )
    split = Split(x, y)
    history = train_model(model, split, split, prepared.inputs, params, 0, fine_tune=fine_tune)
    assert calls == [{"Conv1": True, "Conv_1": True}]
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    assert not np.array_equal(model.get_layer("output").get_weights()[0], head)  # the head trained
    assert np.array_equal(first.get_weights()[0], before["Conv1"])  # still frozen
    assert not np.array_equal(last.get_weights()[0], before["Conv_1"])  # fine-tuned
