"""Train: `model.fit` on a tf.data pipeline with early stopping, checkpoints and resumable backups.

Tracking is not done here: the caller injects its callbacks (e.g. the MLflow per-epoch logger),
so this function is the same under Prefect, DVC, tuning trials and tests. Beside it: the input pipelines
(`tasks/datasets.py`), the accelerator plan and strategy (`tasks/accelerator.py`), the backup a killed training
resumes from (`tasks/resume.py`), and the model set up and fitted from the processed data (`tasks/fit.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerasflow.config import ConfigError, TrainParams
from kerasflow.model_interface import ModelInputs
from tasks.accelerator import spans_workers, weights_digest
from tasks.cross_fit import Folds, MemberLogs, fold_datasets
from tasks.datasets import DataSource, in_memory, make_dataset, sharded_dataset
from tasks.preprocess import ParquetSplit
from tasks.resume import Backup

logger = logging.getLogger(__name__)


def class_weights(
    setting: str | dict[str, float] | None, class_counts: np.ndarray | list[int] | None, classes: list[Any] | None
) -> dict[int, float] | None:
    """Keras `class_weight` from train.class_weight: null, "balanced" (scikit-learn's rule on the training rows'
    class counts; absent classes weigh 1), or {label: weight}."""
    if setting is None:
        return None
    if not classes:
        raise ConfigError("train.class_weight applies to classification only")
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        counts = np.zeros(len(classes), dtype="int64")
        given = np.asarray(class_counts if class_counts is not None else [], dtype="int64")[: len(classes)]
        counts[: len(given)] = given
        present = np.flatnonzero(counts)
        weights = np.ones(len(classes))
        if len(present):
            # scikit-learn's rule on the class indexes repeated by their counts: rows / (classes * rows of the
            # class). It refuses a class with no rows, so it sees the present ones (scaled to all classes) and an
            # absent class weighs 1.
            labels = np.repeat(present.astype("int32"), counts[present])
            found = compute_class_weight("balanced", classes=present, y=labels)
            weights[present] = found * len(present) / len(classes)
        return {index: float(weight) for index, weight in enumerate(weights)}
    names = [str(label) for label in classes]
    unknown = [label for label in setting if label not in names]
    if unknown:
        raise ConfigError(f"train.class_weight: labels {unknown} are not classes of the data {names[:20]}")
    return {index: float(setting.get(name, 1.0)) for index, name in enumerate(names)}


class EpochProgress(keras.callbacks.Callback):
    """One INFO line per epoch (loss, metrics, seconds), so a long run is never silent."""

    def __init__(self, epochs: int, label: str = "") -> None:
        super().__init__()
        self.epochs = epochs
        self.prefix = f"{label}: " if label else ""
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = "  ".join(
            f"{name} {float(value):.4g}" for name, value in (logs or {}).items() if name != "learning_rate"
        )
        seconds = time.perf_counter() - self.started
        logger.info("%sepoch %d/%d  %s  (%.1f s)", self.prefix, epoch + 1, self.epochs, values, seconds)


class EarlyStoppingFromStart(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping whose first candidate is the model before its first epoch, scored on `val_data`
    (`train.early_stopping.from_start`): a start that no epoch beats is what the model keeps. Each epoch's logs
    carry the start's score as `start_<monitor>`, so the history (and `best_epoch`) can tell."""

    def __init__(self, val_data: Any, **options: Any) -> None:
        super().__init__(**options)
        self.val_data = val_data
        self.start: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        scores = self.model.evaluate(self.val_data, verbose=0, return_dict=True)
        name = self.monitor.removeprefix("val_")
        if name in scores:
            self._set_monitor_op()
            self.start = self.best = float(scores[name])
            self.best_weights = self.model.get_weights()
            self.best_epoch = -1
            logger.info("before the first epoch: %s %.4g, the first candidate", self.monitor, self.start)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and self.start is not None:
            logs[f"start_{self.monitor}"] = self.start
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.restore_best_weights and self.start is not None and self.best_epoch == -1:
            logger.info("no epoch beat the start's %s %.4g: the start is kept", self.monitor, self.start)
        super().on_train_end(logs)


def training_callbacks(
    params: TrainParams,
    checkpoint_path: Path | None,
    backup_dir: Path | None,
    injected: Sequence[keras.callbacks.Callback] = (),
    epoch_log: Path | None = None,
    val_data: Any = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks params.yaml asks for, the caller's, then per-epoch log and backup (last, so an
    epoch is logged before the backup says it is done). A caller's `MemberLogs` goes first: every other callback
    (early stopping included) reads the metrics it pools."""
    pooling = [callback for callback in injected if isinstance(callback, MemberLogs)]
    injected = [callback for callback in injected if not isinstance(callback, MemberLogs)]
    callbacks: list[keras.callbacks.Callback] = [*pooling, keras.callbacks.TerminateOnNaN()]
    stopping = params.early_stopping
    if stopping.enabled:
        options = dict(
            monitor=stopping.monitor,
            patience=stopping.patience,
            min_delta=stopping.min_delta,
            restore_best_weights=stopping.restore_best_weights,
            start_from_epoch=stopping.start_from_epoch,
        )
        if stopping.from_start and val_data is not None and stopping.monitor.startswith("val_"):
            callbacks.append(EarlyStoppingFromStart(val_data, **options))
        else:
            callbacks.append(keras.callbacks.EarlyStopping(**options))
    reduce = params.reduce_learning_rate
    if reduce.enabled:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=stopping.monitor,
                factor=reduce.factor,
                patience=reduce.patience,
                min_lr=reduce.min_learning_rate,
                verbose=0,
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
    if epoch_log is not None:
        epoch_log.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.CSVLogger(str(epoch_log), append=True))
    if backup_dir is not None:
        # Kept after the phase ends (the caller removes the folder): see `Backup`. Two copies, so a kill
        # while one is being written leaves the other to resume from.
        callbacks.append(
            keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False, double_checkpoint=True)
        )
    return callbacks


def train_model(
    model: keras.Model,
    train_split: DataSource,
    val_split: DataSource,
    inputs: ModelInputs,
    params: TrainParams,
    seed: int,
    checkpoint_path: Path | None = None,
    backup_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    class_weight: dict[int, float] | None = None,
    fine_tune: Callable[[keras.Model], None] | None = None,
    label: str = "",
    folds: Folds | None = None,
) -> dict[str, list[float]]:
    """Fit `model`; return the per-epoch history (loss, metrics, val_*) of the epochs run here.

    With `train.fine_tune.epochs`, `fine_tune` (which unfreezes and recompiles the model) runs
    after the first phase, and training goes on for those epochs. With `backup_dir`, a killed
    attempt resumes either phase from its last finished epoch (see `Backup`); the backup stays
    until the caller removes it, so a failure after training does not cost the training. `label`
    starts each epoch's log line (a tuning trial's number). With `folds` (train.cross_fit), `model` is the
    members' view and both splits are the pooled rows the folds hold.
    """
    if len(train_split) == 0 or len(val_split) == 0:
        raise ValueError("train and validation splits must not be empty")
    keras.utils.set_random_seed(seed)
    if folds is not None:
        # The class weights ride in the folds' sample weights; the members' metrics are pooled in the logs first.
        train_data, val_data = fold_datasets(folds, inputs, params.batch_size, params.shuffle, seed, class_weight)
        class_weight, callbacks = None, [MemberLogs(folds, class_weight), *callbacks]
    else:
        train_data, val_data, class_weight = training_datasets(
            model, train_split, val_split, inputs, params, seed, class_weight
        )
    phases = Phases(
        model,
        train_data,
        val_data,
        params,
        Backup(backup_dir) if backup_dir is not None else None,
        [*callbacks, EpochProgress(params.epochs + (params.fine_tune.epochs if fine_tune else 0), label)],
        class_weight,
    )
    result = phases.run(checkpoint_path, fine_tune)
    if spans_workers(model):
        # Every worker logs this; the launcher checks they agree (tasks/cluster.py).
        logger.info("final weights sha256 %s", weights_digest(model))
    losses = result.get("loss", [])
    if losses and not np.all(np.isfinite(losses)):
        raise FloatingPointError("training stopped: the loss became NaN or infinite (TerminateOnNaN)")
    logger.info(
        "%strained %d epoch(s) here; final loss %s",
        f"{label}: " if label else "",
        len(losses),
        f"{losses[-1]:.4f}" if losses else "n/a",
    )
    return result


def training_datasets(
    model: keras.Model,
    train_split: DataSource,
    val_split: DataSource,
    inputs: ModelInputs,
    params: TrainParams,
    seed: int,
    class_weight: dict[int, float] | None,
) -> tuple[Any, Any, dict[int, float] | None]:
    """Step one: the training and validation `tf.data` pipelines (read into memory when small enough), each
    worker's shard when the model spans workers (the class weights then ride in the data as sample weights, so
    the class weights `fit` gets are None)."""
    train_split, val_split = in_memory(train_split, params), in_memory(val_split, params)
    if spans_workers(model):
        strategy = model.distribute_strategy
        assert isinstance(train_split, ParquetSplit) and isinstance(val_split, ParquetSplit)
        train_data = sharded_dataset(strategy, train_split, inputs, params, params.shuffle, seed, class_weight)
        return train_data, sharded_dataset(strategy, val_split, inputs, params, False, seed), None
    buffer = params.shuffle_buffer
    train_data = make_dataset(train_split, inputs, params.batch_size, params.shuffle, seed, shuffle_buffer=buffer)
    return train_data, make_dataset(val_split, inputs, params.batch_size, False, seed), class_weight


@dataclass
class Phases:
    """Step two: `model.fit` phase by phase (the head, then fine-tuning), each resumable from its backup."""

    model: keras.Model
    train_data: Any
    val_data: Any
    params: TrainParams
    backup: Backup | None
    callbacks: list[keras.callbacks.Callback]
    class_weight: dict[int, float] | None

    def run(self, checkpoint: Path | None, fine_tune: Callable[[keras.Model], None] | None) -> dict[str, list[float]]:
        """The head (skipped when an earlier attempt finished it), then fine-tuning if asked; both phases' history."""
        backup, params = self.backup, self.params
        head_epochs = backup.head_epochs() if backup else None
        if head_epochs is None:
            result = self.fit("head", 0, params.epochs, checkpoint)
            head_epochs = (backup.completed_epochs() if backup else 0) or len(result.get("loss", []))
            if backup:
                backup.finish_head(self.model, head_epochs)
        else:
            # The first phase finished in an earlier attempt: start fine-tuning from its final weights. (The
            # optimizer is built as fit would have, so the saved model carries a complete training state.)
            self.model.load_weights(backup.head_weights)  # type: ignore[union-attr]
            self.model.optimizer.build(self.model.trainable_variables)
            result = {}
        if params.fine_tune.epochs and fine_tune is not None:
            fine_tune(self.model)
            more = self.fit("fine_tune", head_epochs, head_epochs + params.fine_tune.epochs, None)
            for name, values in more.items():
                result.setdefault(name, []).extend(values)
        return result

    def fit(self, phase: str, first_epoch: int, epochs: int, checkpoint: Path | None) -> dict[str, list[float]]:
        """One phase's `model.fit`, from `first_epoch` to `epochs`; its per-epoch history."""
        backup = self.backup
        history = self.model.fit(
            self.train_data,
            validation_data=self.val_data,
            initial_epoch=first_epoch,
            epochs=epochs,
            callbacks=training_callbacks(
                self.params,
                checkpoint,
                backup.phase_dir(phase) if backup else None,
                self.callbacks,
                backup.epoch_log if backup else None,
                self.val_data,
            ),
            class_weight=self.class_weight,
            shuffle=False,  # The tf.data pipeline shuffles.
            verbose=0,
        )
        # BackupAndRestore leaves a restored start epoch on the model; the next phase sets its own.
        self.model._initial_epoch = None
        return {name: [float(value) for value in values] for name, values in history.history.items()}
