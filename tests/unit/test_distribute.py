"""The GPU path on a CPU: MirroredStrategy over two logical CPU devices matches one device."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kerasflow.config import TrainParams
from tests.conftest import REPO_ROOT

# Logical devices must be configured before TensorFlow starts, so this runs in its own process.
SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from sklearn.datasets import load_breast_cancer
from kerasflow.config import ModelParams, TrainParams
from tasks.model import DataSpec, build_model
from tasks.preprocess import Split, fit_scaling
from tasks.train import accelerator_plan, distribution_strategy, train_model

x, y = load_breast_cancer(return_X_y=True)
x = x.astype("float32")
train, val = Split(x[:384], y[:384]), Split(x[384:], y[384:])
spec = ModelParams.model_validate({"layers": [{"type": "dense", "units": 16, "activation": "relu"}]})
data = DataSpec((30,), "classification", 2, fit_scaling(train.x, "standard", is_image=False))
results = {}
for distribute in ("off", "mirrored"):
    params = TrainParams.model_validate({"epochs": 3, "batch_size": 64, "shuffle": False, "distribute": distribute,
                                         "jit_compile": False, "early_stopping": {"enabled": False}})
    plan = accelerator_plan(params)
    keras.utils.set_random_seed(0)
    with distribution_strategy(plan).scope():
        model = build_model(spec, data, jit_compile=plan["jit_compile"])
    history = train_model(model, train, val, params, seed=0)
    replicas = model.distribute_strategy.num_replicas_in_sync
    predictions = model.predict(val.x[:20], verbose=0).ravel().tolist()
    results[distribute] = {"plan": plan, "loss": history["loss"], "replicas": replicas, "predictions": predictions}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpu_devices_matches_one_device():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    single, mirrored = runs["off"], runs["mirrored"]
    assert single["replicas"] == 1 and single["plan"]["strategy"] == "default"
    assert mirrored["replicas"] == 2 and mirrored["plan"]["strategy"] == "MirroredStrategy"
    assert mirrored["plan"]["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert mirrored["loss"][-1] < mirrored["loss"][0]
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-3)
    np.testing.assert_allclose(mirrored["predictions"], single["predictions"], atol=1e-3)


def test_auto_switches_resolve_to_cpu_defaults_here():
    import tensorflow as tf

    from tasks.train import accelerator_plan

    plan = accelerator_plan(TrainParams())
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert plan["mixed_precision"] is has_gpu and plan["jit_compile"] == "auto"
    assert plan["strategy"] == ("MirroredStrategy" if len(tf.config.list_physical_devices("GPU")) > 1 else "default")
    assert accelerator_plan(TrainParams(mixed_precision=True, distribute="off"))["mixed_precision"] is True
