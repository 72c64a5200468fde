"""One tuning trial: its params, its data (the splits, or k folds of them), its fit, its value of the objective and
how it ended, in its own MLflow run nested under the study's. `flows/tuning.py` runs it as a Prefect task (on
threads, or on a Dask worker, which gets the pickled `StudyPlan`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from kerasflow.config import Params, applicable_params, parse_params
from kerasflow.overrides import apply_overrides
from kerasflow.records import StudyPlan, TrialResult
from kerasflow.runtime import attach_to_prefect_logging, import_quietly, quiet_defaults

logger = logging.getLogger(__name__)


def trial_params(base: dict[str, Any], values: dict[str, Any]) -> Params:
    """The params of one trial: the base params with the trial's values, and tune.epochs as train.epochs."""
    tree = apply_overrides(base, values)
    epochs = tree.get("tune", {}).get("epochs")
    if epochs:
        tree["train"]["epochs"] = epochs
    return parse_params(tree, f"trial values {values}")


def run_trial(plan: StudyPlan, number: int, trial_id: int, values: dict[str, Any]) -> TrialResult:
    """Fit one configuration in an MLflow run nested under the study's, reporting each epoch to the study.

    A trial that fails (a NaN loss from a learning rate too high, a configuration Keras refuses)
    or is pruned is recorded as such, in Optuna and in MLflow, and the study goes on.
    """
    quiet_defaults()
    attach_to_prefect_logging()
    fit = import_quietly("tasks.fit")  # TensorFlow's native start-up lines left out of the log
    import optuna

    from kerasflow import tracking
    from tasks import tune
    from tasks.trial_callbacks import EpochRecorder, PruningCallback

    params = trial_params(plan.base, values)
    tracking.use_uri(plan.tracking_uri)  # A Dask worker is a process of its own.
    tags = {
        "mlflow.parentRunId": plan.parent_run_id,
        "kerasflow.kind": "trial",
        "optuna.study": plan.study,
        "optuna.trial": str(number),
        "registry.model": params.register_.model_name,
        # Where it ran: with a Dask task runner, which worker process on which machine.
        "trial.host": f"{socket.gethostname()} pid {os.getpid()}",
        **{f"trial.{key}": str(value) for key, value in values.items()},
    }
    run_id = tracking.start_child_run(plan.experiment_id, f"trial-{number}", tags)
    trial = optuna.trial.Trial(tune.load_study(params, plan.study, plan.storage), trial_id)
    trial.set_user_attr("mlflow_run_id", run_id)
    curves = EpochRecorder()
    state, value, note = "failed", None, ""
    try:
        data = fit.load_training_data(plan.processed_dir)
        tracking.log_params(run_id, applicable_params(params, data.state))
        tune.check_metric(params.tune, data.state.task)
        watched, sign = tune.watched_metric(params.tune)
        state_rows = data.state.rows
        # With train.cross_fit a trial's validation is out of fold already, over every pooled row: no folds around it.
        k = 1 if params.train.cross_fit else tune.fold_count(params.tune.folds, state_rows["train"] + state_rows["val"])
        values = []
        # Lazily: each fold's files exist until the last fold is fitted.
        for index, fold in enumerate(trial_data(params, data, plan.processed_dir, k)):
            # The first fold reports each epoch (the trial's curves, its pruning); the others only their value.
            recorder = curves if index == 0 else EpochRecorder()
            callbacks: list[Any] = [recorder]
            if index == 0:
                callbacks += [
                    tracking.epoch_logger(run_id, fold.state.rows["train"]),
                    PruningCallback(trial, watched, sign, params.train.epochs),
                ]
            label = f"trial {number}" + (f" fold {index + 1}/{k}" if k > 1 else "")
            setup = fit.build_setup(params.model, params.train, params.seed, fold)
            fit.fit_setup(params.model, params.train, params.seed, fold, setup, callbacks, label=label)
            values.append(objective_value(params, fold, setup, recorder.history()))
        value = float(sum(values) / len(values))
        if len(values) > 1:
            trial.set_user_attr("fold_values", values)
        state = "complete"
    except optuna.TrialPruned as pruned:
        state, note = "pruned", str(pruned)
    except Exception as error:  # Any failure ends this trial, not the study.
        note = f"{type(error).__name__}: {error}".strip()
        logger.warning("trial %d failed: %s", number, note)
    finally:
        epochs = len(curves.rows)
        trial.set_user_attr("curves", curves.validation_curves())
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("note", note)
        close_trial_run(run_id, params, state, value, epochs, note)
    return TrialResult(number, state, value, epochs, run_id, note)


def trial_data(params: Params, data: Any, processed: Path, k: int) -> Iterator[Any]:
    """What a trial fits: the training and validation splits, or (k > 1, tune.folds) each of k folds of them in
    turn, written to a temporary folder removed after the last fold (iterate lazily)."""
    from tasks import tune

    state = data.state
    if k <= 1:
        yield data
        return
    from kerasflow.tables import row_count
    from tasks.fit import TrainingData
    from tasks.preprocess import LABEL, ParquetSplit, split_path

    with tempfile.TemporaryDirectory(prefix="kerasflow-folds-") as folder:
        paths = tune.write_folds(
            split_path(processed, "train"),
            split_path(processed, "val"),
            k,
            params.seed,
            Path(folder),
            LABEL,
            stratify=state.task == "classification",
        )
        for train, val in paths:
            sizes = {**state.rows, "train": row_count(train), "val": row_count(val)}
            yield TrainingData(
                replace(state, rows=sizes),
                ParquetSplit(train, state.inputs, state.image_root),
                ParquetSplit(val, state.inputs, state.image_root),
            )


def objective_value(params: Params, data: Any, setup: Any, history: Any) -> float:
    """The trial's value: a per-epoch metric at the epoch the model keeps (the best one when early stopping
    restores it), or an evaluate metric of the model on the validation split (with train.cross_fit, of the
    out-of-fold outputs)."""
    from tasks.fit import best_epoch, validation_outputs

    metric = params.tune.metric
    if metric.startswith("val_"):
        return float(history.loc[best_epoch(params.train, history), metric])
    from tasks.evaluate import fixed_threshold, score_predictions

    state = data.state
    labels, outputs = validation_outputs(setup, data, params.evaluate.batch_size)
    threshold = fixed_threshold(params.model.decision_threshold)
    scores = score_predictions(state.task, labels, outputs, state.n_classes, threshold)
    return float(scores[metric])


def close_trial_run(run_id: str, params: Params, state: str, value: float | None, epochs: int, note: str) -> None:
    """Record how the trial ended on its MLflow run: its value, its state, a one-line description."""
    from kerasflow import tracking
    from tasks import tune

    name = tune.objective_name(params.tune)
    finite = value is not None and math.isfinite(value)
    tracking.log_metrics(run_id, {name: value, "epochs_trained": epochs} if finite else {"epochs_trained": epochs})
    outcome = {
        "complete": f"complete: {name} {value:.4g} after {epochs} epoch(s)" if value is not None else "complete",
        "pruned": f"pruned: {note}",
        "failed": f"failed: {note}",
    }[state]
    tracking.set_tags(run_id, {"trial.state": state})
    tracking.finish_run(run_id, f"Tuning trial, {outcome}.", failed=state == "failed")
