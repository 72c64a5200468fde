"""The GPU path on a CPU: MirroredStrategy over two logical CPU devices matches one device (a wide and deep model
whose wide layer starts from a fitted logistic regression, `model.wide_start: fitted`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kerasflow.config import TrainParams
from tests.conftest import REPO_ROOT

# Logical devices must be configured before TensorFlow starts, so this runs in its own process.
# Two datasets: numeric columns (with missing values, imputed in the model) and the same plus a
# categorical column (a StringLookup in the model); each trained on one device and mirrored on two.
SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from sklearn.datasets import load_breast_cancer
from kerasflow.config import ModelParams, PreprocessParams, TrainParams
from kerasflow.records import PreprocessState, RawDatasetInfo
from tasks.features import adapt_inputs, describe_inputs, feature_matrix
from tasks.model import build_model
from tasks.preprocess import Split
from tasks.accelerator import accelerator_plan, distribution_strategy
from tasks.datasets import predict
from tasks.train import train_model
from tasks.wide_start import start_wide_from_linear_fit

results = {}
for dataset in ("numeric", "categorical"):
    frame = load_breast_cancer(as_frame=True).frame
    frame.loc[::7, "mean texture"] = np.nan
    if dataset == "categorical":
        frame["size"] = np.where(frame["mean radius"] > 14, "large", "small")
    meta = RawDatasetInfo("target", "classification", [c for c in frame if c != "target"])
    inputs = describe_inputs(frame, meta, PreprocessParams())
    x, y = feature_matrix(frame, meta, inputs), frame["target"].to_numpy()
    train, val = Split(x[:384], y[:384]), Split(x[384:].reset_index(drop=True), y[384:])
    data = PreprocessState("classification", inputs, "target", meta.feature_columns, {}, 0, "", classes=[0, 1],
                           fitted=adapt_inputs(inputs, train.x, PreprocessParams()))
    layers = [{"type": "dense", "units": 16, "activation": "relu"}]
    spec = ModelParams.model_validate({"layers": layers, "linear_skip": True, "wide_start": "fitted"})
    for distribute in ("off", "mirrored"):
        params = TrainParams.model_validate({"epochs": 3, "batch_size": 64, "shuffle": False, "distribute": distribute,
                                             "jit_compile": False, "early_stopping": {"enabled": False}})
        keras.utils.set_random_seed(0)
        try:
            plan = accelerator_plan(params, string_inputs=dataset == "categorical")
            with distribution_strategy(plan).scope():
                model = build_model(spec, data, jit_compile=plan.jit_compile)
            start_wide_from_linear_fit(model, train, data, seed=0)
            history = train_model(model, train, val, inputs, params, seed=0)
        except Exception as error:
            results[f"{dataset}.{distribute}"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            continue
        replicas = model.distribute_strategy.num_replicas_in_sync
        predictions = predict(model, val.x[:20], inputs).ravel().tolist()
        results[f"{dataset}.{distribute}"] = {
            "plan": plan.to_dict(), "loss": history["loss"], "replicas": replicas, "predictions": predictions
        }
print(json.dumps(results))
"""


# train.cross_fit: the members' view trained on the pooled rows' folds, on one device and mirrored on two (its own
# process: TensorFlow's collectives of the mirrored runs above would share its instance keys).
CROSS_FIT_SCRIPT = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from sklearn.datasets import load_breast_cancer
from kerasflow.config import ModelParams, TrainParams
from tasks.datasets import predict
from tasks.fit import TrainingData, build_setup, fit_setup
from tasks.preprocess import Split
from tests.unit.helpers import prepare

cancer = prepare(load_breast_cancer(as_frame=True).frame, "target", "classification", train_rows=384)
x, y = cancer.x, cancer.y
data = TrainingData(cancer.data, Split(x[:384], y[:384]), Split(x[384:].reset_index(drop=True), y[384:]))
spec = ModelParams.model_validate({"layers": [{"type": "dense", "units": 16, "activation": "relu"}], "ensemble": 2})
results = {}
for distribute in ("off", "mirrored"):
    params = TrainParams.model_validate({"epochs": 3, "batch_size": 64, "shuffle": False, "distribute": distribute,
                                         "jit_compile": False, "cross_fit": True, "checkpoint": False,
                                         "early_stopping": {"enabled": False}})
    keras.utils.set_random_seed(0)
    setup = build_setup(spec, params, 0, data)
    history = fit_setup(spec, params, 0, data, setup, [])
    results[f"cross_fit.{distribute}"] = {
        "plan": setup.plan.to_dict(), "loss": history["loss"],
        "replicas": setup.model.distribute_strategy.num_replicas_in_sync,
        "predictions": predict(setup.model, data.val.x[:20], cancer.inputs).ravel().tolist(),
    }
print(json.dumps(results))
"""


def run_script(script: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs():
    return run_script(SCRIPT)


def _check_mirrored_matches_single(runs, dataset):
    single, mirrored = runs[f"{dataset}.off"], runs[f"{dataset}.mirrored"]
    assert "error" not in single, single
    assert "error" not in mirrored, mirrored
    assert single["replicas"] == 1 and single["plan"]["strategy"] == "default"
    assert mirrored["replicas"] == 2 and mirrored["plan"]["strategy"] == "MirroredStrategy"
    assert mirrored["plan"]["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert mirrored["loss"][-1] < mirrored["loss"][0]
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-3)
    np.testing.assert_allclose(mirrored["predictions"], single["predictions"], atol=1e-3)


def test_mirrored_strategy_over_two_cpu_devices_matches_one_device(runs):
    _check_mirrored_matches_single(runs, "numeric")


def test_cross_fitted_members_train_mirrored_as_on_one_device():
    _check_mirrored_matches_single(run_script(CROSS_FIT_SCRIPT), "cross_fit")


def test_a_model_that_takes_strings_trains_on_one_device_and_refuses_mirrored(runs):
    # Keras' fit under MirroredStrategy averages the first batch across replicas, which fails on strings.
    single = runs["categorical.off"]
    assert "error" not in single, single
    assert single["loss"][-1] < single["loss"][0]
    assert runs["categorical.mirrored"]["error"].startswith("ConfigError: train.distribute: mirrored cannot train")


def test_auto_switches_resolve_to_cpu_defaults_here():
    import tensorflow as tf

    from tasks.accelerator import accelerator_plan

    plan = accelerator_plan(TrainParams())
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert plan.mixed_precision == ("mixed_float16" if has_gpu else False) and plan.jit_compile == "auto"
    assert plan.strategy == ("MirroredStrategy" if len(tf.config.list_physical_devices("GPU")) > 1 else "default")
    # Op determinism is on without a GPU (reproduce matches exactly) and off on one unless asked for.
    assert plan.deterministic is (not has_gpu)
    assert accelerator_plan(TrainParams(deterministic=False)).deterministic is False
    # Keras compiles nothing with XLA under op determinism: asking for XLA leaves auto determinism off.
    assert accelerator_plan(TrainParams(jit_compile=True)).deterministic is False
    # Asked for on a CPU, mixed precision computes in bfloat16 (CPUs have no fast float16).
    forced = accelerator_plan(TrainParams(mixed_precision=True, distribute="off")).mixed_precision
    assert forced == ("mixed_float16" if has_gpu else "mixed_bfloat16")


@pytest.mark.parametrize("switch", [{"mixed_precision": True}, {"jit_compile": True}], ids=["mixed", "xla"])
def test_the_gpu_switches_train_a_model_that_learns_on_the_cpu(switch):
    """The GPU path's switches, really used: mixed precision (bfloat16 here) and XLA compile and learn on the CPU."""
    import keras
    from sklearn.datasets import load_breast_cancer

    from kerasflow.config import ModelParams
    from tasks.accelerator import accelerator_plan, distribution_strategy
    from tasks.datasets import predict
    from tasks.model import build_model
    from tasks.preprocess import Split
    from tasks.train import train_model
    from tests.unit.helpers import prepare

    cancer = prepare(load_breast_cancer(as_frame=True).frame, "target", "classification", train_rows=400)
    train, val = Split(cancer.x.iloc[:400], cancer.y[:400]), Split(cancer.x.iloc[400:], cancer.y[400:])
    params = TrainParams.model_validate({"epochs": 8, "early_stopping": {"enabled": False}, **switch})
    plan = accelerator_plan(params)
    keras.utils.set_random_seed(0)
    try:
        with distribution_strategy(plan).scope():
            model = build_model(
                ModelParams.model_validate({"layers": [{"type": "dense", "units": 16, "activation": "relu"}]}),
                cancer.data,
                jit_compile=plan.jit_compile,
            )
        hidden = model.layers[[layer.name for layer in model.layers].index("output") - 1]
        history = train_model(model, train, val, cancer.inputs, params, seed=0)
        accuracy = float(np.mean((predict(model, val.x, cancer.inputs).ravel() >= 0.5) == val.y))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert history["loss"][-1] < history["loss"][0] * 0.7 and accuracy > 0.85
    if "mixed_precision" in switch:
        assert hidden.compute_dtype == "bfloat16" and model.get_layer("output").compute_dtype == "float32"
    else:
        assert model.jit_compile is True
