"""Stage train: adapt the input layers, fit the model, then publish it.

Read top to bottom, `run` is the recipe: load the splits, build the model (before the MLflow
run exists, so a bad spec leaves no run behind), record what is trained on, fit (resuming a
killed attempt), and publish: the model files appear in models/ and the model in MLflow only
once the logged model, loaded back through MLflow, predicts what the trained one does.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml

from flows.stages import Context
from kerasflow import tracking
from kerasflow.config import Params, applicable_params
from kerasflow.io import atomic_dir, atomic_path, read_json, write_json, write_text
from kerasflow.layout import Layout
from kerasflow.records import PreprocessState, TrainingResult
from tasks import cluster
from tasks.accelerator import device_summary
from tasks.datasets import predict, shard_steps
from tasks.evaluate import choose_threshold, fixed_threshold, primary_metric, save_test_outputs
from tasks.features import raw_example
from tasks.fit import (
    ModelSetup,
    TrainingData,
    best_epoch,
    build_setup,
    first_rows,
    fit_setup,
    load_training_data,
    local_copy,
    validation_outputs,
)
from tasks.model import compiled_loss, export_for_serving
from tasks.preprocess import read_state, split_path, split_source
from tasks.resume import Backup, backup_folder, best_weights_path, finished_epochs, reconcile_backups, worker_backup

logger = logging.getLogger(__name__)

# A decision threshold (model.decision_threshold: auto) is chosen on at least this many validation rows; on fewer,
# one row moves the score by more than a threshold usually gains, and it stays 0.5.
MIN_THRESHOLD_ROWS = 100
# How far the logged model's predictions may stray from the trained model's (float32 rounding), relative to the
# largest output when that is above 1.
ROUND_TRIP_TOLERANCE = 1e-5


def run(params: Params, context: Context) -> TrainingResult | None:
    """Adapt the input layers and fit the model; log lineage, epochs and the model to the MLflow run. With
    train.workers (and train.distribute: multi_worker), N local worker processes do it (`run_workers`)."""
    if params.train.distribute == "multi_worker":
        if params.train.workers:
            return run_workers(params, context)
        # One worker of a cluster TF_CONFIG describes, in this process (as `kerasflow train-worker` runs it).
        if not cluster.check(params.train).chief:  # type: ignore[union-attr]
            return train_shard(params, context)
    return train_and_publish(params, context)


def train_and_publish(params: Params, context: Context) -> TrainingResult:
    """The train stage in one process: alone, or as the chief of several workers."""
    layout = context.layout
    data = load_training_data(layout.processed_dir)
    setup = build_setup(params.model, params.train, params.seed, data)
    experiment_id = tracking.configure(params.tracking, context.project_root)
    with tracking.open_run(experiment_id, run_id=context.run_id, system_metrics=True) as run_id:
        record_run(run_id, params, context, data, setup)
        history = fit_resuming(params, context, data, setup, run_id)
        best = best_epoch(params.train, history)
        logged = publish(run_id, params, layout, data, setup, epochs=len(history))
        tracking.log_model_metrics(
            {"epochs_trained": len(history), "best_epoch": best, "roundtrip_max_abs_diff": logged.difference},
            logged.model_id,
        )
        write_history(layout, history)
        # The chief of several workers keeps the others' folders inside it: a worker may still be writing there
        # (each removes its own; run_workers removes the rest once every worker has exited).
        Backup(stage_backup(params, layout, data.state.data_md5)).remove(keep=("workers",))
        tracking.describe_run(run_id)
        result = TrainingResult(
            run_id=run_id,
            experiment_id=experiment_id,
            model_uri=logged.uri,
            model_id=logged.model_id,
            artifacts_sha256=logged.digest,
            tracking_uri=tracking.portable_uri(tracking.current_uri(), context.project_root),
            run_url=tracking.run_url(run_id, experiment_id),
            epochs_trained=len(history),
            best_epoch=best,
            cross_fit_members=setup.folds.members if setup.folds else None,
        )
        result.write(layout.run_file)
    return result


def train_shard(params: Params, context: Context) -> None:
    """A worker other than the chief: train on its shard in step with the others, then remove what it wrote (its
    backup, in a folder of its own). It records nothing and publishes nothing: the chief does."""
    data = load_training_data(context.layout.processed_dir)
    setup = build_setup(params.model, params.train, params.seed, data)
    worker = cluster.read_tf_config()
    backup = worker_backup(stage_backup(params, context.layout, data.state.data_md5), worker.index)
    history = fit_setup(params.model, params.train, params.seed, data, setup, [], backup=backup.folder)
    backup.remove()
    logger.info("worker %d of %d: trained %d epoch(s)", worker.index, worker.size, len(history.get("loss", [])))


def run_workers(params: Params, context: Context) -> TrainingResult:
    """Start train.workers local worker processes (`python -m flows.train_worker`, TF_CONFIG on free loopback
    ports) and wait for them all; the chief's record is the stage's result. A failed worker fails the stage by
    name, with its last lines, the others stopped and no model published."""
    layout = context.layout
    state = read_state(layout.processed_dir)
    cluster.check(params.train, state.string_inputs)
    workers = params.train.workers or 1
    per_replica = cluster.per_replica_batch(params.train, workers)
    for name in ("train", "val"):  # a split too small for every worker to get a batch is refused before any start
        shard_steps(split_source(layout.processed_dir, name, state), workers, per_replica)
    chief_backup = stage_backup(params, layout, state.data_md5)
    reconcile_backups(chief_backup, workers)
    layout.run_file.unlink(missing_ok=True)
    # The params as this run has them (overrides included), where every worker sees them: beside the backups.
    layout.backup_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="workers-", dir=layout.backup_dir.parent) as folder:
        effective = Path(folder) / "params.yaml"
        effective.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
        arguments = ["--params", str(effective), "--root", str(layout.root)]
        arguments += ["--project-root", str(context.project_root)]
        # This run's data: a flow run's split is in its content cache, not the run folder's data/processed/.
        arguments += ["--raw-dir", str(layout.raw_dir), "--processed-dir", str(layout.processed_dir)]
        arguments += ["--schema", str(layout.schema)]
        if context.run_id:
            arguments += ["--run-id", context.run_id]
        try:
            if params.train.launcher == "kubernetes":
                from tasks import kubernetes_job

                name = f"kerasflow-train-{Path(folder).name.removeprefix('workers-').lower().replace('_', '-')}"
                manifest = context.project_root / kubernetes_job.MANIFEST
                kubernetes_job.launch(workers, arguments, params.train.kubernetes_namespace, manifest, name)
            else:
                cluster.launch(workers, arguments, cwd=context.project_root)
        except cluster.WorkerFailed:
            # A chief killed outright leaves its MLflow run RUNNING: it failed.
            marker = chief_backup / "mlflow_run.json"
            if marker.is_file() and read_json(marker)["run_id"] != context.run_id:
                tracking.configure(params.tracking, context.project_root)
                tracking.mark_failed(read_json(marker)["run_id"])
            raise
    Backup(chief_backup).remove()
    return TrainingResult.read(layout.run_file)


def record_run(run_id: str, params: Params, context: Context, data: TrainingData, setup: ModelSetup) -> None:
    """Params that apply to this data, lineage (git, data hash, orchestrator, source, user), the devices and
    the training and validation splits as datasets, on the active MLflow run."""
    state = data.state
    rows = state.rows
    sizes = f"{sum(rows.values()):,} rows: train {rows['train']:,}, val {rows['val']:,}, test {rows['test']:,}"
    stopping = params.train.early_stopping
    tracking.set_tags(
        run_id,
        {
            **tracking.lineage_tags(context.project_root),
            "registry.model": params.register_.model_name,
            "data.md5": state.data_md5,
            "data.source": state.source_label,
            "data.rows": sizes,
            "data.inputs": state.inputs.kind,
            "model.api": params.model.api,
            # What preprocess computed on a sample, and columns it warned about (constant ones).
            **{f"data.note.{name}": note for name, note in state.notes.items()},
            "train.restored_best": str(stopping.enabled and stopping.restore_best_weights),
            **{f"train.{key}": str(value) for key, value in {**device_summary(), **setup.plan.to_dict()}.items()},
        },
    )
    tracking.log_params(run_id, applicable_params(params, state))
    tracking.log_text(run_id, yaml.safe_dump(params.to_dict(), sort_keys=False), "params.yaml")
    # What `kerasflow reproduce` needs besides the commit and the data's hash: the raw data's description and
    # the schema validate checked it against.
    records = (context.layout.raw_meta, context.layout.schema)
    tracking.log_files(run_id, *(record for record in records if record.is_file()), folder="lineage")
    schema = tracking.input_schema(state.model_config(fixed_threshold(params.model.decision_threshold)))
    for name, context_name in (("train", "training"), ("val", "validation")):
        tracking.log_split(layout_split_file(context.layout, name), name, rows[name], schema, context_name)


def fit_resuming(params: Params, context: Context, data: TrainingData, setup: ModelSetup, run_id: str) -> pd.DataFrame:
    """Fit, resuming from the per-epoch backup a killed attempt left; return every epoch's metrics."""
    backup = stage_backup(params, context.layout, data.state.data_md5)
    earlier = resume_history(backup, run_id)
    # The best-weights checkpoint grows beside the backup; outputs appear only when training succeeded.
    checkpoint = best_weights_path(backup)

    callbacks = [tracking.epoch_logger(run_id, data.state.rows["train"])]
    history = fit_setup(params.model, params.train, params.seed, data, setup, callbacks, checkpoint, backup)
    frame = pd.concat([earlier, pd.DataFrame(history)], ignore_index=True)
    # Counted from 1, as the training log counts them (MLflow's steps are Keras' epoch index, from 0).
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


def layout_split_file(layout: Layout, name: str) -> Path:
    return split_path(layout.processed_dir, name)


def stage_backup(params: Params, layout: Layout, data_md5: str) -> Path:
    """The train stage's backup folder, in the run folder's backups."""
    return backup_folder(layout.backup_dir, params.model, params.train, params.seed, data_md5)


def resume_history(folder: Path, run_id: str) -> pd.DataFrame:
    """Epochs a killed attempt finished, so the history has each epoch once.

    In a new MLflow run (a rerun) they are replayed into it and the killed attempt's run, left
    RUNNING by the kill, is marked FAILED; in the same run (a Prefect retry) they are logged already.
    """
    marker = folder / "mlflow_run.json"
    previous = read_json(marker)["run_id"] if marker.is_file() else None
    if previous and previous != run_id:
        tracking.mark_failed(previous)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"run_id": run_id})
    earlier = finished_epochs(folder)
    if earlier.empty:
        return earlier
    if previous != run_id:
        tracking.replay_epochs(run_id, earlier.to_dict("records"))
    logger.info("resuming training after epoch %d of an interrupted attempt", Backup(folder).completed_epochs())
    return earlier.drop(columns="epoch")


@dataclass(frozen=True)
class LoggedModel:
    """The model as MLflow holds it: its URI and id, the digest of its files, and how far its predictions
    loaded back through MLflow strayed from the trained model's."""

    uri: str
    model_id: str
    digest: str
    difference: float


def publish(
    run_id: str, params: Params, layout: Layout, data: TrainingData, setup: ModelSetup, epochs: int
) -> LoggedModel:
    """Save the model files and log the MLflow model, named after the workload.

    models/ appears whole, and only once the logged model, loaded back through MLflow from the
    files the store holds, has proved it predicts what this one does (the serving smoke test;
    register checks that the version it registers has those same files).
    """
    model, state = local_copy(params.model, setup), data.state
    config = state.model_config(decision_threshold(run_id, params, data, setup))
    example = raw_example(first_rows(data.val), state.inputs)
    write_model_summary(run_id, model, layout.model_summary)
    checkpoint = best_weights_path(stage_backup(params, layout, state.data_md5))
    with atomic_dir(layout.models_dir) as folder:
        model.save(folder / layout.model_file.name)
        export_for_serving(model, folder / layout.saved_model_dir.name, state.inputs)
        write_json(folder / layout.model_config.name, config.to_dict())
        shutil.copy(layout.processed_dir / "statistics.json", folder / layout.statistics.name)
        if checkpoint.is_file():
            (folder / "checkpoints").mkdir()
            os.replace(checkpoint, folder / "checkpoints" / layout.checkpoint_file.name)
        info = tracking.log_model(
            folder / layout.model_file.name,
            config,
            example,
            saved_model=folder / layout.saved_model_dir.name,
            name=params.register_.model_name,
            step=epochs,
            statistics=folder / layout.statistics.name,
        )
        expected = predict(model, example, state.inputs)
        digest, difference = tracking.check_logged_model(info.model_uri, example, expected, config)
        # float32 rounding grows with the values (a regression target in its own units: 150.0 has steps of 1.5e-5).
        tolerance = ROUND_TRIP_TOLERANCE * max(1.0, float(np.max(np.abs(expected))) if np.size(expected) else 1.0)
        if difference > tolerance:
            raise RuntimeError(
                f"the logged model's predictions differ from the trained model's by {difference:g} "
                f"(tolerance {tolerance:g}); not publishing it"
            )
        score_test_split(params, layout, state, model, folder / layout.test_outputs.name)
    return LoggedModel(info.model_uri, info.model_id, digest, difference)


def score_test_split(params: Params, layout: Layout, state: PreprocessState, model: keras.Model, path: Path) -> None:
    """The final model's outputs on the test split and its test loss, for evaluate. Scored here, once the model is
    final and published, by the process that holds it: evaluate then needs no TensorFlow (it weighs outputs).
    evaluate.batch_size is how many rows go through the model at a time, not what they score, so it is not one of
    train's DVC params (a params file need not name it)."""
    test_split = split_source(layout.processed_dir, "test", state)
    outputs = predict(model, test_split, state.inputs, params.evaluate.batch_size)
    save_test_outputs(path, outputs, compiled_loss(model, test_split.labels(), outputs))


def decision_threshold(run_id: str, params: Params, data: TrainingData, setup: ModelSetup) -> float:
    """model.decision_threshold, or (auto, two classes) the one that scores best on the validation split (with
    train.cross_fit, on the pooled rows' out-of-fold outputs)."""
    setting = params.model.decision_threshold
    if setting != "auto" or data.state.n_classes != 2:
        return fixed_threshold(setting)
    rows = len(setup.folds.rows) if setup.folds else len(data.val)
    if rows < MIN_THRESHOLD_ROWS:
        logger.info("decision threshold 0.5: %d validation rows are too few to choose one on", rows)
        return 0.5
    labels, outputs = validation_outputs(setup, data, params.evaluate.batch_size)
    metric = primary_metric(params.evaluate, data.state.task)
    threshold = choose_threshold(labels, outputs, metric)
    logger.info("decision threshold %.4g: the best on the %s for %s", threshold,
                "out-of-fold outputs" if setup.folds else "validation split",
                metric if metric == "accuracy" else "macro F1")  # fmt: skip
    tracking.log_params(run_id, {"model.decision_threshold_chosen": threshold})
    return threshold


def write_model_summary(run_id: str, model: keras.Model, path: Path) -> None:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    write_text(path, "\n".join(lines) + "\n")
    tracking.log_files(run_id, path)


def write_history(layout: Layout, history: pd.DataFrame) -> None:
    with atomic_path(layout.history) as temporary:
        history.to_csv(temporary, index=False)
