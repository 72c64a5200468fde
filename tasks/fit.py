"""Fitting a model on preprocess's splits, for the train stage and for each tuning trial.

`build_setup` builds and compiles the model on the input constants preprocess fitted (under the
distribution strategy the accelerator plan chose); `fit_setup` fits it, both phases with
`train.fine_tune`, resuming from a backup when given one; `best_epoch` is the epoch whose weights it
holds; a fitted wide start (`model.wide_start`) is set here, before the first epoch. With `train.cross_fit`,
what is fitted is the members' view on the pooled rows (tasks/cross_fit.py), and `validation_outputs` are
out of fold. What a killed attempt resumes from is in tasks/resume.py. Nothing here talks to MLflow: the stage
does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from kerasflow.config import ModelParams, TrainParams
from kerasflow.metrics import is_better, lower_is_better
from kerasflow.records import PreprocessState
from kerasflow.runtime import set_seeds
from tasks.accelerator import AcceleratorPlan, accelerator_plan, distribution_strategy, spans_workers
from tasks.backbone import unfreeze
from tasks.cross_fit import Folds, assign_folds, members_view, out_of_fold
from tasks.datasets import predict
from tasks.model import build_model, compile_model
from tasks.preprocess import ParquetSplit, Split, pooled, read_state, split_source
from tasks.train import class_weights, train_model
from tasks.wide_start import start_wide_from_linear_fit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """The preprocessing state (with the fitted input constants) and the two splits training sees."""

    state: PreprocessState
    train: ParquetSplit | Split
    val: ParquetSplit | Split


@dataclass(frozen=True)
class ModelSetup:
    """A compiled model and everything `fit` needs besides the data (with train.cross_fit, the folds and the
    members' view that learns from them)."""

    model: keras.Model
    state: PreprocessState
    plan: AcceleratorPlan
    strategy: tf.distribute.Strategy
    class_weight: dict[int, float] | None
    folds: Folds | None = None


def load_training_data(processed: Path) -> TrainingData:
    state = read_state(processed)
    return TrainingData(state, split_source(processed, "train", state), split_source(processed, "val", state))


def build_setup(model: ModelParams, train: TrainParams, seed: int, data: TrainingData) -> ModelSetup:
    """Seed everything, build and compile the model on the input constants preprocess fitted."""
    state = data.state
    # The plan first: across workers it makes the strategy, which must precede any other TensorFlow work.
    plan = accelerator_plan(train, string_inputs=state.string_inputs)
    set_seeds(seed)
    strategy = distribution_strategy(plan)
    with strategy.scope():
        built = build_model(model, state, jit_compile=plan.jit_compile)
    weights = class_weights(train.class_weight, state.class_counts, state.classes)
    if model.wide_start == "fitted":
        start_wide_from_linear_fit(built, data.train, state, seed, weights)
    folds = None
    if train.cross_fit:
        rows = pooled(data.train, data.val)
        with strategy.scope():
            view = members_view(built, model, state, plan.jit_compile)
        folds = Folds(rows, assign_folds(rows.y, model.ensemble, seed, state.task == "classification"), view)
        logger.info(
            "cross-fitting %d members on the %d training and validation rows pooled: each learns from %d of %d folds "
            "and is validated on the other (out of fold)",
            model.ensemble,
            len(rows),
            model.ensemble - 1,
            model.ensemble,
        )
    return ModelSetup(built, state, plan, strategy, weights, folds)


def fit_setup(
    model: ModelParams,
    train: TrainParams,
    seed: int,
    data: TrainingData,
    setup: ModelSetup,
    callbacks: list[keras.callbacks.Callback],
    checkpoint: Path | None = None,
    backup: Path | None = None,
    label: str = "",
) -> dict[str, list[float]]:
    """`fit` the set-up model on the training data with `callbacks` (both phases, with train.fine_tune); the
    train stage adds its checkpoint and resumable backup, a tuning trial its pruning and its label."""
    folds = setup.folds
    if folds:  # cross-fitted: the members' view learns from the pooled rows (it has no fine-tuning phase)
        fitted, train_rows, val_rows = folds.view, folds.rows, folds.rows
    else:
        fitted, train_rows, val_rows = setup.model, data.train, data.val
    return train_model(
        fitted,
        train_rows,
        val_rows,
        data.state.inputs,
        train,
        seed,
        checkpoint_path=checkpoint,
        backup_dir=backup,
        callbacks=callbacks,
        class_weight=setup.class_weight,
        fine_tune=None if folds else fine_tuner(model, train, setup),
        label=label,
        folds=folds,
    )


def validation_outputs(setup: ModelSetup, data: TrainingData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The labels and the trained model's outputs of the rows that validate it: the validation split's, or with
    train.cross_fit every pooled row's from the member that did not learn from it."""
    if setup.folds is not None:
        return setup.folds.rows.y, out_of_fold(setup.folds, data.state.inputs, batch_size)
    val = data.val
    return val.labels(), predict(setup.model, val.x if isinstance(val, Split) else val, data.state.inputs, batch_size)


def fine_tuner(model: ModelParams, train: TrainParams, setup: ModelSetup) -> Callable[[keras.Model], None]:
    """What starts the second phase (train.fine_tune): unfreeze the backbone's last layers, recompile at the
    fine-tuning learning rate."""

    def fine_tune(trained: keras.Model) -> None:
        with setup.strategy.scope():
            unfreeze(trained, train.fine_tune.layers)
            compile_model(trained, model, setup.state, setup.plan.jit_compile, train.fine_tune.learning_rate)

    return fine_tune


def best_epoch(train: TrainParams, history: pd.DataFrame) -> int:
    """The epoch whose weights the model holds: the best of the last phase by the early-stopping monitor when
    its weights are restored, else the last epoch."""
    stopping = train.early_stopping
    if not (stopping.enabled and stopping.restore_best_weights) or stopping.monitor not in history:
        return int(history["epoch"].iloc[-1])
    last_phase = history.tail(train.fine_tune.epochs) if train.fine_tune.epochs else history
    # Early stopping watches no epoch before start_from_epoch (when training ran past it).
    watched = (
        last_phase.iloc[stopping.start_from_epoch :] if len(last_phase) > stopping.start_from_epoch else last_phase
    )
    values = watched[stopping.monitor]
    best = values.idxmin() if lower_is_better(stopping.monitor) else values.idxmax()
    start = f"start_{stopping.monitor}"  # train.early_stopping.from_start: the phase's start, kept if not beaten
    if start in last_phase and last_phase[start].notna().any():
        # Keras keeps the start unless an epoch is strictly better.
        if not is_better(stopping.monitor, float(values.loc[best]), float(last_phase[start].dropna().iloc[0])):
            head = history.iloc[: len(history) - len(last_phase)]
            if head.empty:
                return 0  # the model as it was before training
            # Fine-tuning kept the head it started from: the head phase's own best epoch.
            return best_epoch(
                train.model_copy(update={"fine_tune": train.fine_tune.model_copy(update={"epochs": 0})}), head
            )
    return int(last_phase.loc[best, "epoch"])


def local_copy(model: ModelParams, setup: ModelSetup) -> keras.Model:
    """The trained model, for saving and checking: itself, or (trained across workers) the same model built
    outside the strategy with the trained weights, so that what the chief alone does next (predict the input
    example, export) starts no collective operation the other workers would have to join."""
    if not spans_workers(setup.model):
        return setup.model
    copy = build_model(model, setup.state, jit_compile=False)
    copy.set_weights(setup.model.get_weights())
    # The optimizer's state too, so the saved model holds the whole training state as one process's does.
    copy.optimizer.build(copy.trainable_variables)
    trained = setup.model.optimizer.variables
    if len(copy.optimizer.variables) == len(trained):
        for target, source in zip(copy.optimizer.variables, trained, strict=True):
            target.assign(source.numpy())
    return copy


def first_rows(split: ParquetSplit, rows: int = 5) -> Any:
    """The split's first rows as raw features (images decoded): the input example."""
    x, _ = next(split.batches(rows))
    return x
