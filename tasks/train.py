"""Train: `model.fit` on a tf.data pipeline with early stopping, checkpoints and resumable backups.

Tracking is not done here: the caller injects its callbacks (e.g. the MLflow
per-epoch logger), so this function is the same under Prefect, DVC and tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasflow.config import TrainParams
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


def accelerator_plan(params: TrainParams) -> dict[str, Any]:
    """What the GPU-path switches resolve to on this machine (logged with the run)."""
    gpus = tf.config.list_physical_devices("GPU")
    devices = [device.name for device in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
    mirrored = params.distribute == "mirrored" or (params.distribute == "auto" and len(gpus) > 1)
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


def make_dataset(split: Split, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline over one split."""
    dataset = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if shuffle:
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
    params: TrainParams,
    seed: int,
    checkpoint_path: Path | None = None,
    backup_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Fit `model`; return the per-epoch history (loss, metrics, val_*)."""
    if len(train_split) == 0 or len(val_split) == 0:
        raise ValueError("train and validation splits must not be empty")
    keras.utils.set_random_seed(seed)
    history = model.fit(
        make_dataset(train_split, params.batch_size, params.shuffle, seed),
        validation_data=make_dataset(val_split, params.batch_size, False, seed),
        epochs=params.epochs,
        callbacks=training_callbacks(params, checkpoint_path, backup_dir, callbacks),
        shuffle=False,  # The tf.data pipeline shuffles.
        verbose=0,
    )
    result = {name: [float(value) for value in values] for name, values in history.history.items()}
    losses = result.get("loss", [])
    if not losses or not np.all(np.isfinite(losses)):
        raise FloatingPointError("training stopped: the loss became NaN or infinite (TerminateOnNaN)")
    logger.info("trained %d epoch(s); final loss %.4f", len(losses), losses[-1])
    return result
