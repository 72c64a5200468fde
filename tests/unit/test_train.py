"""Training really learns: the loss goes down and the model beats chance."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from kerasflow.config import ModelParams, TrainParams
from tasks.model import DataSpec, build_model
from tasks.preprocess import Split, fit_scaling
from tasks.train import device_summary, make_dataset, train_model


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype("float32")
    return Split(x[:400], y[:400]), Split(x[400:], y[400:])


def make_model(train_split):
    spec = ModelParams.model_validate({"layers": [{"type": "dense", "units": 16, "activation": "relu"}]})
    data = DataSpec((30,), "classification", 2, fit_scaling(train_split.x, "standard", is_image=False))
    return build_model(spec, data)


@pytest.mark.slow
def test_loss_goes_down_and_accuracy_beats_chance(cancer, tmp_path):
    train_split, val_split = cancer
    keras.utils.set_random_seed(0)
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    history = train_model(
        make_model(train_split),
        train_split,
        val_split,
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
    assert not (tmp_path / "backup").exists()  # the resumable backup and its epoch log go after success


def test_early_stopping_stops_before_the_epoch_budget(cancer):
    train_split, val_split = cancer
    params = TrainParams.model_validate({"epochs": 200, "early_stopping": {"patience": 1, "min_delta": 10.0}})
    history = train_model(make_model(train_split), train_split, val_split, params, seed=0)
    assert len(history["loss"]) == 2


def test_nan_loss_stops_training_with_a_clear_error(cancer):
    train_split, val_split = cancer
    poisoned = Split(np.full_like(train_split.x, np.nan), train_split.y)
    with pytest.raises(FloatingPointError, match="NaN"):
        train_model(make_model(train_split), poisoned, val_split, TrainParams(epochs=3), seed=0)


def test_empty_split_is_refused(cancer):
    train_split, _ = cancer
    with pytest.raises(ValueError, match="must not be empty"):
        train_model(make_model(train_split), train_split, Split(train_split.x[:0], train_split.y[:0]), TrainParams(), 0)


def test_dataset_is_batched_and_seeded(cancer):
    train_split, _ = cancer
    first = next(iter(make_dataset(train_split, 64, shuffle=True, seed=1)))[1].numpy()
    again = next(iter(make_dataset(train_split, 64, shuffle=True, seed=1)))[1].numpy()
    assert len(first) == 64 and np.array_equal(first, again)


def test_device_summary_matches_what_tensorflow_sees():
    import tensorflow as tf

    summary = device_summary()
    assert summary["gpus"] == len(tf.config.list_physical_devices("GPU"))
    assert summary["device"] == ("GPU" if summary["gpus"] else "CPU")
    assert summary["tensorflow_version"] == tf.__version__
