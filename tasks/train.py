"""Train: `model.fit` on a tf.data pipeline with early stopping, checkpoints and resumable backups.

Tracking is not done here: the caller injects its callbacks (e.g. the MLflow
per-epoch logger), so this function is the same under Prefect, DVC and tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasflow.config import ConfigError, TrainParams
from tasks.features import model_inputs
from tasks.preprocess import Split

logger = logging.getLogger(__name__)


def device_summary() -> dict[str, Any]:
    """Which devices TensorFlow will train on (GPU when it sees one)."""
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "device": "GPU" if gpus else "CPU",
        "gpus": len(gpus),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


def accelerator_plan(params: TrainParams, string_inputs: bool = False) -> dict[str, Any]:
    """What the GPU-path switches resolve to on this machine (logged with the run).

    Models that take strings (categorical or text columns) train on one device: Keras' fit under
    MirroredStrategy averages the first batch across replicas, which fails on string tensors.
    """
    gpus = tf.config.list_physical_devices("GPU")
    devices = [device.name for device in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
    if string_inputs and params.distribute == "mirrored":
        raise ConfigError(
            "train.distribute: mirrored cannot train a model that takes strings (categorical or text columns); "
            "use auto or off"
        )
    mirrored = params.distribute == "mirrored" or (params.distribute == "auto" and len(gpus) > 1 and not string_inputs)
    return {
        "mixed_precision": bool(gpus) if params.mixed_precision == "auto" else params.mixed_precision,
        "jit_compile": params.jit_compile,
        "strategy": "MirroredStrategy" if mirrored and len(devices) > 1 else "default",
        "replicas": len(devices) if mirrored and len(devices) > 1 else 1,
        "devices": devices if mirrored else devices[:1],
    }


def distribution_strategy(plan: dict[str, Any]) -> tf.distribute.Strategy:
    """The strategy to build and fit the model under; set the precision policy to match."""
    keras.mixed_precision.set_global_policy("mixed_float16" if plan["mixed_precision"] else "float32")
    if plan["strategy"] == "MirroredStrategy":
        return tf.distribute.MirroredStrategy(plan["devices"])
    return tf.distribute.get_strategy()


def make_dataset(
    split: Split, inputs: dict[str, Any], batch_size: int, shuffle: bool = False, seed: int = 0, labels: bool = True
) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline over one split's raw features (and labels)."""
    features = model_inputs(split.x, inputs)
    dataset = tf.data.Dataset.from_tensor_slices((features, split.y) if labels else features)
    if shuffle:
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict(model: keras.Model, x: Any, inputs: dict[str, Any], batch_size: int = 256) -> np.ndarray:
    """The model's outputs on raw features (Keras' predict refuses NumPy strings, so it goes through tf.data)."""
    dataset = make_dataset(Split(x, np.zeros(len(x))), inputs, batch_size, labels=False)
    return np.asarray(model.predict(dataset, verbose=0))


def class_weights(
    setting: str | dict[str, float] | None, y_train: np.ndarray, classes: list[Any] | None
) -> dict[int, float] | None:
    """Keras `class_weight` from train.class_weight: null, "balanced", or {label: weight}."""
    if setting is None:
        return None
    if not classes:
        raise ConfigError("train.class_weight applies to classification only")
    if setting == "balanced":
        counts = np.bincount(y_train, minlength=len(classes)).astype("float64")
        # The scikit-learn rule: rows / (classes * rows of the class); absent classes weigh 1.
        weights = np.where(counts > 0, len(y_train) / (len(classes) * np.maximum(counts, 1)), 1.0)
        return {index: float(weight) for index, weight in enumerate(weights)}
    names = [str(label) for label in classes]
    unknown = [label for label in setting if label not in names]
    if unknown:
        raise ConfigError(f"train.class_weight: labels {unknown} are not classes of the data {names[:20]}")
    return {index: float(setting.get(name, 1.0)) for index, name in enumerate(names)}


def completed_epochs(backup_dir: Path | None) -> int:
    """How many epochs a killed earlier attempt finished (0 if there is no backup to resume from)."""
    metadata = backup_dir / "training_metadata.json" if backup_dir else None
    if metadata is None or not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


def training_callbacks(
    params: TrainParams,
    checkpoint_path: Path | None,
    backup_dir: Path | None,
    injected: Sequence[keras.callbacks.Callback] = (),
) -> list[keras.callbacks.Callback]:
    """The callbacks params.yaml asks for, the caller's, then per-epoch log and backup (last, so an
    epoch is logged before the backup says it is done)."""
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    stopping = params.early_stopping
    if stopping.enabled:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=stopping.monitor,
                patience=stopping.patience,
                min_delta=stopping.min_delta,
                restore_best_weights=stopping.restore_best_weights,
            )
        )
    if params.checkpoint and checkpoint_path is not None:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(checkpoint_path), monitor=stopping.monitor, save_best_only=True, save_weights_only=True
            )
        )
    callbacks.extend(injected)
    if backup_dir is not None:
        # A killed run resumes from its last finished epoch; the epoch log survives with the backup.
        backup_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.CSVLogger(str(backup_dir / "epochs.csv"), append=True))
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True))
    return callbacks


def train_model(
    model: keras.Model,
    train_split: Split,
    val_split: Split,
    inputs: dict[str, Any],
    params: TrainParams,
    seed: int,
    checkpoint_path: Path | None = None,
    backup_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    class_weight: dict[int, float] | None = None,
    fine_tune: Callable[[keras.Model], None] | None = None,
) -> dict[str, list[float]]:
    """Fit `model`; return the per-epoch history (loss, metrics, val_*).

    With `train.fine_tune.epochs`, `fine_tune` (which unfreezes and recompiles the model)
    runs after the first phase, and training goes on for those epochs.
    """
    if len(train_split) == 0 or len(val_split) == 0:
        raise ValueError("train and validation splits must not be empty")
    keras.utils.set_random_seed(seed)
    resumed = completed_epochs(backup_dir)  # epochs an interrupted attempt finished (BackupAndRestore resumes)
    train_data = make_dataset(train_split, inputs, params.batch_size, params.shuffle, seed)
    val_data = make_dataset(val_split, inputs, params.batch_size, False, seed)
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=params.epochs,
        callbacks=training_callbacks(params, checkpoint_path, backup_dir, callbacks),
        class_weight=class_weight,
        shuffle=False,  # The tf.data pipeline shuffles.
        verbose=0,
    )
    result = {name: [float(value) for value in values] for name, values in history.history.items()}
    if params.fine_tune.epochs and fine_tune is not None:
        done = resumed + len(result.get("loss", []))
        # BackupAndRestore leaves its restored start epoch on the model; the second phase sets its own.
        model._initial_epoch = None
        fine_tune(model)
        # No backup in this phase: a killed fine-tune starts over from the trained head.
        more = model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=done,
            epochs=done + params.fine_tune.epochs,
            callbacks=training_callbacks(params, None, None, callbacks),
            class_weight=class_weight,
            shuffle=False,
            verbose=0,
        )
        for name, values in more.history.items():
            result.setdefault(name, []).extend(float(value) for value in values)
    losses = result.get("loss", [])
    if not losses or not np.all(np.isfinite(losses)):
        raise FloatingPointError("training stopped: the loss became NaN or infinite (TerminateOnNaN)")
    logger.info("trained %d epoch(s); final loss %.4f", len(losses), losses[-1])
    return result
