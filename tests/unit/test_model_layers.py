"""kerasflow's own layers (kerasflow/model_layers.py): the oblivious trees' leaves, their training, their round trip
through a `.keras` file loaded with safe_mode, and their bad arguments."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasflow.config import ConfigError, LayerSpec, ModelParams
from kerasflow.model_layers import ObliviousTrees
from tasks.model import build_model, make_layer
from tests.unit.helpers import log_mixed_model, model_state
from tests.unit.test_recipe import NUMBERS, fitted_for, skewed


def test_each_tree_spreads_a_row_over_its_leaves_and_sharp_splits_pick_one_leaf():
    layer = ObliviousTrees(trees=3, depth=4, units=2)
    x = np.random.default_rng(0).normal(size=(5, 7)).astype("float32")
    out = np.asarray(layer(x))
    assert out.shape == (5, 2)
    # With every response 1, each tree returns the sum of its leaf probabilities: 1.
    layer.response.assign(np.ones((3, 16, 2), "float32"))
    np.testing.assert_allclose(np.asarray(layer(x)), 1.0, rtol=1e-5)
    # Very sharp splits on feature 0 at threshold 0, and leaf l answering l: a row lands in the leaf whose bits
    # are its answers (all levels ask the same question: leaf 0 below, leaf 15 above).
    selection = np.full((7, 3, 4), -50.0, "float32")
    selection[0] = 50.0
    layer.selection.assign(selection)
    layer.thresholds.assign(np.zeros((3, 4), "float32"))
    layer.log_scale.assign(np.full((3, 4), -10.0, "float32"))
    layer.response.assign(np.tile(np.arange(16, dtype="float32")[None, :, None], (3, 1, 2)))
    expected = np.where(x[:, 0] > 0, 15.0, 0.0)
    np.testing.assert_allclose(np.asarray(layer(x))[:, 0], expected, atol=1e-3)


def test_trees_learn_a_step_that_a_linear_layer_cannot():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 3)).astype("float32")
    y = (np.abs(x[:, 1]) > 0.7).astype("float32")  # two cuts of one feature: no line separates it
    keras.utils.set_random_seed(1)

    def fitted(hidden):
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(1, activation="sigmoid")(hidden(inputs) if hidden else inputs)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, epochs=40, batch_size=64, verbose=0)
        return history.history

    trees = fitted(ObliviousTrees(trees=16, depth=3, units=4))
    linear = fitted(None)
    assert trees["loss"][-1] < trees["loss"][0] / 2
    assert trees["accuracy"][-1] > 0.9 > max(linear["accuracy"])


def test_a_model_with_trees_loads_from_its_keras_file_in_safe_mode(tmp_path):
    state = model_state(NUMBERS, "classification", 3, fitted_for(skewed(), NUMBERS))
    spec = ModelParams(layers=[{"type": "oblivious_trees", "trees": 8, "depth": 3, "units": 4}], ensemble=2)
    model = build_model(spec, state)
    x = {"numeric": tf.constant(np.random.default_rng(2).normal(size=(6, 2)), dtype=tf.float32)}
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5)
    # By name: a pyfunc loaded earlier in the process registers its own copy of the class (kerasflow/model_layers.py).
    assert sum(type(layer).__name__ == "ObliviousTrees" for layer in loaded.layers) == 2  # one a member


def test_the_logged_pyfunc_brings_its_layers_where_kerasflow_is_not_imported(mlflow_store, tmp_path):
    """MLflow loads the model in a process that never imports kerasflow (a scoring server): the copy of
    model_layers.py logged with the model registers the trees before the `.keras` file loads."""
    import subprocess
    import sys

    import mlflow

    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from tasks.datasets import predict

    with tracking.open_run(tracking.configure(TrackingParams(), tmp_path)):
        uri, model, prepared, example = log_mixed_model(
            tmp_path, "regression", layers=[{"type": "oblivious_trees", "trees": 4, "depth": 2, "units": 3}]
        )
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "downloaded"))
    example.to_parquet(tmp_path / "example.parquet")
    script = (
        "import sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "print(model.predict(pd.read_parquet(sys.argv[2]))['prediction'].round(5).tolist())\n"
        "assert not any(name == 'kerasflow' or name.startswith('kerasflow.') for name in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, local, str(tmp_path / "example.parquet")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = eval(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served, predict(model, example, prepared.inputs).ravel(), atol=1e-4)


def test_bad_tree_arguments_name_the_layer():
    with pytest.raises(ConfigError, match=r"model.layers\[0\] \(oblivious_trees\): depth must be"):
        make_layer(LayerSpec(type="oblivious_trees", depth=12), "model.layers[0]")
    with pytest.raises(ConfigError, match="unknown argument 'leaves'"):
        make_layer(LayerSpec(type="oblivious_trees", leaves=8), "model.layers[0]")
    with pytest.raises(ConfigError, match=r"l1 and l2 penalize a layer's kernel; oblivious_trees has none"):
        make_layer(LayerSpec(type="oblivious_trees", l2=0.01), "model.layers[0]")
    assert isinstance(make_layer(LayerSpec(type="oblivious_trees", trees=2), "model.layers[0]"), ObliviousTrees)
