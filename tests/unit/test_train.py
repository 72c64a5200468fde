"""Training really learns from raw columns, text and images: the loss goes down and the model beats chance."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.datasets import load_breast_cancer

from kerasflow.config import ConfigError, ModelParams, PreprocessParams, TrainParams
from kerasflow.model_interface import to_model_inputs
from kerasflow.samples import linear
from tasks.accelerator import device_summary
from tasks.datasets import make_dataset, predict
from tasks.features import target_scaling
from tasks.model import build_model, compile_model
from tasks.preprocess import Split
from tasks.resume import Backup
from tasks.train import class_weights, train_model
from tests.unit.helpers import mixed_frame, model_state, prepare, review_frame

QUICK = {"early_stopping": {"enabled": False}, "checkpoint": False}


def train_params(**values) -> TrainParams:
    return TrainParams.model_validate({**QUICK, **values})


def splits(prepared, train_rows: int) -> tuple[Split, Split]:
    x, y = prepared.x, prepared.y
    return Split(x.iloc[:train_rows], y[:train_rows]), Split(x.iloc[train_rows:].reset_index(drop=True), y[train_rows:])


@pytest.fixture(scope="module")
def cancer():
    """Breast cancer columns as raw DataFrame columns (names with spaces), adapted on the first 400 rows."""
    frame = load_breast_cancer(as_frame=True).frame
    return prepare(frame, "target", "classification", train_rows=400)


def make_model(prepared, **values):
    values.setdefault("layers", [{"type": "dense", "units": 16, "activation": "relu"}])
    return build_model(ModelParams.model_validate(values), prepared.data)


def accuracy(model, split: Split, inputs) -> float:
    return float(np.mean((predict(model, split.x, inputs).ravel() >= 0.5) == split.y))


def test_loss_goes_down_and_accuracy_beats_chance(cancer, tmp_path):
    train_split, val_split = splits(cancer, 400)
    keras.utils.set_random_seed(0)
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    history = train_model(
        make_model(cancer),
        train_split,
        val_split,
        cancer.inputs,
        TrainParams(epochs=8, batch_size=32),
        seed=0,
        checkpoint_path=tmp_path / "best.weights.h5",
        backup_dir=tmp_path / "backup",
        callbacks=[Recorder()],
    )
    assert history["loss"][-1] < history["loss"][0] * 0.7
    assert history["val_accuracy"][-1] > 0.85  # chance is ~0.63 (the majority class)
    assert seen == list(range(len(history["loss"])))  # injected callbacks see every epoch
    assert (tmp_path / "best.weights.h5").is_file()
    # The backup stays for the caller, who removes it once it has kept the model; it says all 8 epochs are done.
    assert Backup(tmp_path / "backup").completed_epochs() == 8 == len(history["loss"])


def test_early_stopping_stops_before_the_epoch_budget(cancer):
    train_split, val_split = splits(cancer, 400)
    params = TrainParams.model_validate({"epochs": 200, "early_stopping": {"patience": 1, "min_delta": 10.0}})
    history = train_model(make_model(cancer), train_split, val_split, cancer.inputs, params, seed=0)
    assert len(history["loss"]) == 2


@pytest.mark.parametrize("from_start", [True, False])
def test_from_start_keeps_a_start_that_no_epoch_beats(cancer, from_start):
    """A good start, then epochs at a learning rate that only makes it worse: with from_start the model keeps the
    start (best epoch 0, the start's score in the history); without it, the least bad epoch."""
    from tasks.fit import best_epoch

    train_split, val_split = splits(cancer, 400)
    spec = ModelParams.model_validate({"layers": []})
    keras.utils.set_random_seed(0)
    model = build_model(spec, cancer.data)
    train_model(model, train_split, val_split, cancer.inputs, train_params(epochs=10), seed=0)
    start = predict(model, val_split.x, cancer.inputs)
    compile_model(model, spec, cancer.data, jit_compile=False, learning_rate=50.0)
    stopping = {"patience": 2, "from_start": from_start}
    params = TrainParams.model_validate({"epochs": 4, "checkpoint": False, "early_stopping": stopping})
    history = train_model(model, train_split, val_split, cancer.inputs, params, seed=0)
    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    kept = predict(model, val_split.x, cancer.inputs)
    if from_start:
        assert min(history["val_loss"]) > history["start_val_loss"][0]  # every epoch worse than the start
        np.testing.assert_allclose(kept, start, rtol=1e-5, atol=1e-6)
        assert best_epoch(params, frame) == 0
    else:
        assert "start_val_loss" not in history
        assert not np.allclose(kept, start, rtol=1e-3)
        assert best_epoch(params, frame) >= 1


def test_from_start_is_not_kept_when_an_epoch_beats_it(cancer):
    from tasks.fit import best_epoch

    train_split, val_split = splits(cancer, 400)
    keras.utils.set_random_seed(0)
    model = make_model(cancer)
    params = TrainParams.model_validate({"epochs": 5, "checkpoint": False, "early_stopping": {"from_start": True}})
    history = train_model(model, train_split, val_split, cancer.inputs, params, seed=0)
    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    assert min(history["val_loss"]) < history["start_val_loss"][0]  # a random start is beaten at once
    assert best_epoch(params, frame) == int(np.argmin(history["val_loss"])) + 1


def test_a_fine_tuning_phase_that_beats_nothing_keeps_the_heads_best_epoch():
    from tasks.fit import best_epoch

    params = TrainParams.model_validate(
        {"epochs": 4, "fine_tune": {"epochs": 2}, "early_stopping": {"from_start": True}}
    )
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4, 5, 6],
            "val_loss": [0.9, 0.5, 0.6, 0.7, 0.8, 0.9],  # the head's best is epoch 2; fine-tuning only worse
            "start_val_loss": [1.2, 1.2, 1.2, 1.2, 0.5, 0.5],  # fine-tuning starts from the head's restored best
        }
    )
    assert best_epoch(params, history) == 2
    better = history.assign(val_loss=[0.9, 0.5, 0.6, 0.7, 0.4, 0.45])
    assert best_epoch(params, better) == 5


def test_nan_loss_stops_training_with_a_clear_error(cancer):
    train_split, val_split = splits(cancer, 400)
    regression = model_state(cancer.inputs, "regression", 0, cancer.fitted)
    model = build_model(ModelParams.model_validate({"layers": [{"type": "dense", "units": 4}]}), regression)
    # A NaN target makes the squared error NaN on the first batch, whatever the weights: certain, never clipped.
    poisoned = Split(train_split.x, np.full(len(train_split), np.nan, dtype="float32"))
    stopped = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stopped.append(epoch)

    with pytest.raises(FloatingPointError, match="NaN"):
        train_model(model, poisoned, val_split, cancer.inputs, train_params(epochs=3), seed=0, callbacks=[Epochs()])
    assert stopped == [0]  # TerminateOnNaN ended training in its first epoch


def test_empty_split_is_refused(cancer):
    train_split, _ = splits(cancer, 400)
    empty = Split(train_split.x.iloc[:0], train_split.y[:0])
    with pytest.raises(ValueError, match="must not be empty"):
        train_model(make_model(cancer), train_split, empty, cancer.inputs, TrainParams(), 0)


def test_dataset_is_batched_seeded_and_keyed_by_input_name():
    prepared = prepare(mixed_frame(rows=100), "label", "classification", text_column="note")
    split = Split(prepared.x, prepared.y)
    features, labels = next(iter(make_dataset(split, prepared.inputs, 64, shuffle=True, seed=1)))
    _, again = next(iter(make_dataset(split, prepared.inputs, 64, shuffle=True, seed=1)))
    _, other = next(iter(make_dataset(split, prepared.inputs, 64, shuffle=True, seed=2)))
    assert len(labels) == 64 and np.array_equal(labels.numpy(), again.numpy())
    assert not np.array_equal(labels.numpy(), other.numpy())
    assert sorted(features) == ["color", "note", "numeric"]
    assert features["numeric"].dtype == tf.float32 and features["numeric"].shape == (64, 1)
    assert features["color"].dtype == tf.string and features["note"].dtype == tf.string
    unlabelled = next(iter(make_dataset(split, prepared.inputs, 8, labels=False)))
    assert isinstance(unlabelled, dict) and unlabelled["numeric"].shape == (8, 1)


def test_predict_takes_raw_columns(cancer):
    model = make_model(cancer)
    rows = cancer.x.head(5)
    outputs = predict(model, rows, cancer.inputs, batch_size=2)
    assert outputs.shape == (5, 1)
    np.testing.assert_allclose(outputs, np.asarray(model(to_model_inputs(rows, cancer.inputs))), atol=1e-6)


@pytest.mark.parametrize(
    ("setting", "y", "classes", "expected"),
    [
        (None, [0, 1, 1], ["no", "yes"], None),
        # scikit-learn's "balanced": rows / (classes * rows of the class).
        ("balanced", [0, 0, 0, 1], ["no", "yes"], {0: 4 / 6, 1: 2.0}),
        ("balanced", [0, 0, 2, 2], ["a", "b", "c"], {0: 4 / 6, 1: 1.0, 2: 4 / 6}),  # "b" is absent: weight 1
        ({"yes": 5.0}, [0, 1], ["no", "yes"], {0: 1.0, 1: 5.0}),  # unnamed classes keep weight 1
        ({"1": 3.0, "0": 0.5}, [0, 1], [0, 1], {0: 0.5, 1: 3.0}),  # integer classes are named as strings
    ],
)
def test_class_weights(setting, y, classes, expected):
    weights = class_weights(setting, np.bincount(np.array(y, dtype=int)), classes)
    assert weights == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    ("setting", "classes", "expected"),
    [
        ({"maybe": 2.0}, ["no", "yes"], r"labels \['maybe'\] are not classes of the data \['no', 'yes'\]"),
        ("balanced", None, "applies to classification only"),
        ({"1": 2.0}, [], "applies to classification only"),
    ],
)
def test_class_weights_that_cannot_apply_are_named(setting, classes, expected):
    with pytest.raises(ConfigError, match=expected):
        class_weights(setting, np.array([1, 1]), classes)


def test_balanced_class_weight_moves_predictions_towards_the_minority_class():
    """On a noise feature with one positive in five, unweighted training predicts ~0.2; balanced, ~0.5."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"noise": rng.normal(size=250), "label": (np.arange(250) % 5 == 0).astype(int)})
    prepared = prepare(frame, "label", "classification", train_rows=200)
    train_split, val_split = splits(prepared, 200)
    weights = class_weights("balanced", np.bincount(train_split.y), [0, 1])
    assert weights == pytest.approx({0: 200 / (2 * 160), 1: 200 / (2 * 40)})
    means = {}
    for name, weight in (("none", None), ("balanced", weights)):
        keras.utils.set_random_seed(0)
        model = make_model(prepared, layers=[], optimizer={"learning_rate": 0.05})
        history = train_model(
            model, train_split, val_split, prepared.inputs, train_params(epochs=6), seed=0, class_weight=weight
        )
        assert history["loss"][-1] < history["loss"][0]
        means[name] = float(predict(model, val_split.x, prepared.inputs).mean())
    assert means["none"] < 0.3 and means["balanced"] > 0.4


def test_fine_tune_phase_extends_the_history(cancer):
    train_split, val_split = splits(cancer, 400)
    spec = ModelParams.model_validate({"layers": [{"type": "dense", "units": 8, "activation": "relu"}]})
    keras.utils.set_random_seed(0)
    model = build_model(spec, cancer.data)
    seen, calls = [], []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    def fine_tune(trained):
        calls.append(len(seen))  # called once the first phase is done
        compile_model(trained, spec, cancer.data, jit_compile=False, learning_rate=1e-4)

    params = train_params(epochs=3, fine_tune={"epochs": 2, "learning_rate": 1e-4})
    history = train_model(
        model, train_split, val_split, cancer.inputs, params, 0, callbacks=[Recorder()], fine_tune=fine_tune
    )
    assert calls == [3]
    assert len(history["loss"]) == len(history["val_loss"]) == 3 + 2
    assert seen == [0, 1, 2, 3, 4]  # the second phase carries the epoch count on
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    assert history["loss"][-1] < history["loss"][0]


def test_fine_tune_after_a_resumed_first_phase(cancer, tmp_path):
    train_split, val_split = splits(cancer, 400)
    params = train_params(epochs=4, fine_tune={"epochs": 2})
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    class Killed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="killed"):  # the backup keeps epoch 0
        train_model(make_model(cancer), train_split, val_split, cancer.inputs, params, 0, None, backup, [Killed()])
    resumed = make_model(cancer)
    history = train_model(
        resumed, train_split, val_split, cancer.inputs, params, 0, None, backup, [Recorder()], None, lambda m: None
    )
    assert seen[:3] == [1, 2, 3]  # the first phase resumes after epoch 0
    assert seen == [1, 2, 3, 4, 5]  # and the fine-tune epochs follow its four
    assert len(history["loss"]) == 3 + 2


def test_a_kill_while_fine_tuning_resumes_fine_tuning_after_its_last_finished_epoch(cancer, tmp_path):
    train_split, val_split = splits(cancer, 400)
    params = train_params(epochs=3, fine_tune={"epochs": 3, "learning_rate": 1e-4})
    seen, tuned = [], []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    class Killed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 4:  # the second fine-tuning epoch: the backup keeps epochs 0-3
                raise RuntimeError("killed")

    def fine_tune(model):
        tuned.append(True)
        compile_model(model, ModelParams(), cancer.data, jit_compile=False, learning_rate=1e-4)

    backup = tmp_path / "backup"

    def train(callback: keras.callbacks.Callback) -> Any:
        split = (train_split, val_split, cancer.inputs)
        return train_model(make_model(cancer), *split, params, 0, None, backup, [callback], None, fine_tune)

    with pytest.raises(RuntimeError, match="killed"):
        train(Killed())
    assert Backup(backup).head_epochs() == 3 and Backup(backup).completed_epochs() == 4
    history = train(Recorder())
    # The first phase is not trained again; fine-tuning goes on from epoch 4 of 6, recompiled for it.
    assert seen == [4, 5] and len(history["loss"]) == 2 and tuned == [True, True]
    assert Backup(backup).completed_epochs() == 6


@pytest.mark.parametrize("fine_tune_epochs", [0, 2])
def test_no_fine_tune_phase_without_epochs_or_a_callback(cancer, fine_tune_epochs):
    train_split, val_split = splits(cancer, 400)
    calls = []
    params = train_params(epochs=2, fine_tune={"epochs": fine_tune_epochs})
    callback = calls.append if fine_tune_epochs == 0 else None
    history = train_model(make_model(cancer), train_split, val_split, cancer.inputs, params, 0, fine_tune=callback)
    assert len(history["loss"]) == 2 and calls == []


def test_text_model_learns_from_raw_strings():
    params = PreprocessParams.model_validate({"text": {"max_tokens": 100, "sequence_length": 10}})
    prepared = prepare(review_frame(200), "sentiment", "classification", params, text_column="review", train_rows=150)
    train_split, val_split = splits(prepared, 150)
    keras.utils.set_random_seed(0)
    model = build_model(
        ModelParams.model_validate(
            {
                "layers": [
                    {"type": "embedding", "output_dim": 8, "mask_zero": True},
                    {"type": "global_average_pooling1d"},
                ],
                "optimizer": {"learning_rate": 0.02},
            }
        ),
        prepared.data,
    )
    history = train_model(model, train_split, val_split, prepared.inputs, train_params(epochs=10, batch_size=16), 0)
    assert history["loss"][-1] < history["loss"][0] * 0.8
    assert accuracy(model, val_split, prepared.inputs) > 0.8  # balanced classes: chance is 0.5


def test_columns_with_missing_values_and_categories_are_learned():
    prepared = prepare(
        mixed_frame(rows=300, seed=2, text_signal=False).drop(columns="note"), "label", "classification", train_rows=220
    )
    train_split, val_split = splits(prepared, 220)
    keras.utils.set_random_seed(0)
    model = make_model(prepared, optimizer={"learning_rate": 0.02})
    history = train_model(model, train_split, val_split, prepared.inputs, train_params(epochs=15, batch_size=32), 0)
    majority = max(val_split.y.mean(), 1 - val_split.y.mean())
    assert history["loss"][-1] < history["loss"][0] * 0.9
    assert accuracy(model, val_split, prepared.inputs) > majority + 0.05


def test_a_linear_model_fits_a_linear_target():
    prepared = prepare(linear(rows=300, seed=0), "y", "regression", train_rows=240)
    train_split, val_split = splits(prepared, 240)
    keras.utils.set_random_seed(0)
    model = build_model(ModelParams.model_validate({"optimizer": {"learning_rate": 0.1}}), prepared.data)
    history = train_model(model, train_split, val_split, prepared.inputs, train_params(epochs=25, batch_size=16), 0)
    predicted = predict(model, val_split.x, prepared.inputs).ravel()
    residual = np.sum((val_split.y - predicted) ** 2) / np.sum((val_split.y - val_split.y.mean()) ** 2)
    assert history["loss"][-1] < history["loss"][0] * 0.1
    assert 1 - residual > 0.95  # r2; predicting the mean scores 0


def test_device_summary_matches_what_tensorflow_sees():
    summary = device_summary()
    assert summary["gpus"] == len(tf.config.list_physical_devices("GPU"))
    assert summary["device"] == ("GPU" if summary["gpus"] else "CPU")
    assert summary["tensorflow_version"] == tf.__version__


def test_splits_keep_raw_frames(cancer):
    train_split, val_split = splits(cancer, 400)
    assert isinstance(train_split.x, pd.DataFrame) and len(train_split) == 400 and len(val_split) == 169


@pytest.mark.parametrize("scale_target", [True, False])
def test_a_scaled_target_makes_large_regression_targets_learnable(scale_target):
    """Prices in the hundreds of thousands: learned in standard deviations, the same small budget fits them."""
    frame = linear(rows=300, seed=0)
    frame["y"] = 100_000 + 20_000 * frame["y"]
    params = PreprocessParams(scale_target=scale_target)
    prepared = prepare(frame, "y", "regression", params, train_rows=240)
    train_split, val_split = splits(prepared, 240)
    fitted = replace(prepared.fitted, target=target_scaling(train_split.y, "regression", params))
    keras.utils.set_random_seed(0)
    model = build_model(
        ModelParams.model_validate({"optimizer": {"learning_rate": 0.1}}),
        model_state(prepared.inputs, "regression", 0, fitted),
    )
    history = train_model(model, train_split, val_split, prepared.inputs, train_params(epochs=10, batch_size=16), 0)
    predicted = predict(model, val_split.x, prepared.inputs).ravel()
    r2 = 1 - np.sum((val_split.y - predicted) ** 2) / np.sum((val_split.y - val_split.y.mean()) ** 2)
    if scale_target:
        assert history["loss"][0] < 10  # the loss is on the standardized scale
        assert history["loss"][-1] < history["loss"][0] * 0.1 and r2 > 0.95
        assert history["val_rmse"][-1] < 0.3 * val_split.y.std()  # metrics stay in target units
    else:
        assert history["loss"][0] > 1e8 and r2 < 0.5  # raw units: the same budget does not get there


def test_a_split_file_streams_every_row_once_per_epoch_in_a_seeded_order(tmp_path):
    """Row groups in a seeded order each epoch, through a bounded shuffle buffer: each epoch holds every row once,
    the same seed gives the same order, the next epoch another; unshuffled, the file's own order."""
    import pyarrow as pa

    from kerasflow.model_interface import InputColumn, ModelInputs
    from kerasflow.tables import ParquetStream
    from tasks.preprocess import LABEL, ParquetSplit

    rows = 1000
    frame = pd.DataFrame({"value": np.arange(rows, dtype="float64"), LABEL: np.arange(rows) % 2})
    with ParquetStream(tmp_path / "train.parquet", 64) as stream:
        stream.write(pa.Table.from_pandas(frame, preserve_index=False))
        stream.commit()
    inputs = ModelInputs("columns", (InputColumn("value", "numeric", "numeric"),))
    split = ParquetSplit(tmp_path / "train.parquet", inputs)

    def epochs(dataset, count=2):
        return [np.concatenate([x["numeric"].numpy().ravel() for x, _ in dataset]) for _ in range(count)]

    first, second = epochs(make_dataset(split, inputs, 50, shuffle=True, seed=3, shuffle_buffer=100))
    again, _ = epochs(make_dataset(split, inputs, 50, shuffle=True, seed=3, shuffle_buffer=100))
    assert sorted(first) == sorted(second) == list(range(rows))  # every row once
    assert np.array_equal(first, again) and not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(rows))
    (ordered,) = epochs(make_dataset(split, inputs, 50), 1)
    assert np.array_equal(ordered, np.arange(rows))
    batches = [len(y) for _, y in make_dataset(split, inputs, 300)]
    assert batches == [300, 300, 300, 100]  # batches span row groups; only the last is short
