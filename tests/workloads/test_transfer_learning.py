"""Transfer learning from the example params file: a keras.applications backbone with weights from a
local file, frozen while the head trains, then a fine-tune phase on its last layers."""

from __future__ import annotations

import numpy as np
import pytest

from flows.stages import Context, run_pipeline
from kerasflow import samples
from kerasflow.config import load_params
from kerasflow.layout import Layout
from tests.conftest import use_store
from tests.workloads.test_workloads import copy_example

# Each runs the whole pipeline through its stages: an end-to-end test, not a unit's.
pytestmark = pytest.mark.integration


def pretrain_backbone(images):
    """Pretrained weights the test makes (no ImageNet download): MobileNetV2 trained briefly on the images."""
    import keras
    import tensorflow as tf

    # Op determinism is process-wide, and a pipeline run earlier in the process leaves it as its training set it:
    # set it here, so these weights (and the accuracy the test expects from them) never depend on what ran before.
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(7)
    data = keras.utils.image_dataset_from_directory(images, image_size=(32, 32), batch_size=32, seed=7, verbose=False)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8  # so a few passes settle the moving statistics that inference mode uses
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(
        backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    )
    classifier = keras.Model(inputs, outputs)
    classifier.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy")
    classifier.fit(data, epochs=10, verbose=0)
    # Settle BatchNormalization's moving statistics, which the frozen backbone uses in inference mode.
    images = np.concatenate([batch for batch, _ in data]) / 127.5 - 1
    for _ in range(30):
        backbone(images, training=True)
    return backbone


@pytest.mark.slow
def test_backbone_from_a_local_weights_file_then_fine_tuned(tmp_path, monkeypatch):
    import keras

    project = copy_example("transfer_learning", tmp_path)
    samples.shapes(tmp_path / "examples" / "image_folder_cnn" / "images", per_class=40)
    pretrained = pretrain_backbone(tmp_path / "examples" / "image_folder_cnn" / "images")
    weights_file = tmp_path / "mobilenet_v2_no_top.weights.h5"
    pretrained.save_weights(weights_file)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = use_store(tmp_path / "mlflow.db")
    overrides = {"model.backbone.weights": str(weights_file), "train.epochs": 4, "train.fine_tune.epochs": 2}
    params = load_params(project / "params.yaml", overrides)
    layout = Layout(project)

    results = run_pipeline(params, Context(layout, project))

    trained = keras.saving.load_model(layout.model_file, safe_mode=True)
    backbone = trained.get_layer("backbone")
    tuned = params.train.fine_tune.layers
    # The layers the fine-tune phase left frozen still hold exactly the file's weights.
    for layer, original in zip(backbone.layers[:-tuned], pretrained.layers[:-tuned], strict=True):
        for after, before in zip(layer.get_weights(), original.get_weights(), strict=True):
            np.testing.assert_array_equal(after, before)
    # The fine-tuned ones moved, so the second phase really trained the backbone.
    moved = [
        not np.array_equal(after, before)
        for layer, original in zip(backbone.layers[-tuned:], pretrained.layers[-tuned:], strict=True)
        for after, before in zip(layer.get_weights(), original.get_weights(), strict=True)
    ]
    assert any(moved)
    history = client.get_metric_history(results["train"].run_id, "epoch/train_loss")
    first_phase = len(history) - params.train.fine_tune.epochs
    assert 1 <= first_phase <= params.train.epochs and len(history) == results["train"].epochs_trained
    assert history[-1].value < history[0].value
    assert results["evaluate"].test["accuracy"] > 0.6  # three classes: chance is 1/3
