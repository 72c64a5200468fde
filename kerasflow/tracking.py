"""MLflow tracking at the edge: one run per pipeline run, lineage tags, per-epoch metrics.

Stages that run in separate processes (DVC) write into the same run: the train
stage creates it and records its id in a small file, the later stages reopen it.
Every run is closed FINISHED or FAILED by the context managers here, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from kerasflow.config import Params, TrackingParams, flatten
from kerasflow.model_interface import ModelConfig, model_outputs

logger = logging.getLogger(__name__)

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def resolve_tracking_uri(params: TrackingParams, project_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else params (a relative sqlite path is taken from the project root)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str((project_root / uri[len(prefix) :]).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For a tracking server, one quick health check, so a pipeline fails before training, not after.

    MLflow's own client would retry an unreachable server for minutes.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # It answered; authentication or routing is MLflow's business from here on.
    except (OSError, ValueError) as error:
        raise ConnectionError(
            f"MLflow tracking server {uri} is not reachable ({error}); start it, or unset MLFLOW_TRACKING_URI "
            "to use the local sqlite store"
        ) from error


def configure(params: TrackingParams, project_root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; return the experiment id."""
    uri = resolve_tracking_uri(params, project_root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient()
        experiment = client.get_experiment_by_name(params.experiment)
    except Exception as error:  # The store is unreachable or broken: say which one.
        raise ConnectionError(f"MLflow tracking store {uri} is not reachable: {error}") from error
    if experiment is not None:
        return experiment.experiment_id
    # Local stores keep artifacts beside the database, not wherever the process happened to start.
    location = (project_root / "mlartifacts").resolve().as_uri() if is_local_store(uri) else None
    return client.create_experiment(params.experiment, artifact_location=location)


@contextlib.contextmanager
def open_run(experiment_id: str, run_id: str | None = None, run_name: str | None = None) -> Iterator[str]:
    """Start a new run (run_id None) or reopen one; close it FINISHED, or FAILED on any exception."""
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name)
    try:
        yield run.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def create_run(experiment_id: str, tags: dict[str, str], flat_params: dict[str, Any]) -> str:
    """Create a run that stays RUNNING until a stage closes it (or `mark_failed`)."""
    client = MlflowClient()
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        log_params(flat_params, run_id=run_id)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def mark_failed(run_id: str) -> None:
    """Mark a run FAILED from outside it (e.g. a flow that failed after the run closed)."""
    MlflowClient().set_terminated(run_id, status="FAILED")


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def log_params(flat_params: dict[str, Any], run_id: str | None = None) -> None:
    """Log flattened params (to the active run, or `run_id`), leaving out anything named like a secret."""
    # Empty values say nothing and show as blanks in the UI: left out.
    safe = {name: value for name, value in flat_params.items() if not is_secret(name) and value is not None}
    mlflow.log_params(safe, run_id=run_id)


def git_tags(project_root: Path) -> dict[str, str]:
    """The git commit and whether the work tree was dirty (empty outside a git checkout)."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments], cwd=project_root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.SubprocessError):
        return {}


def lineage_tags(project_root: Path) -> dict[str, str]:
    """Lineage of a pipeline run: git commit, and the Prefect flow run or DVC stage."""
    return {**git_tags(project_root), **orchestration_tags()}


def begin_pipeline_run(params: Params, project_root: Path, workdir: Path) -> str:
    """Create the MLflow run of a whole pipeline run (left RUNNING), with params and lineage."""
    experiment_id = configure(params.tracking, project_root)
    tags = {**lineage_tags(project_root), "kerasflow.workdir": str(workdir)}
    return create_run(experiment_id, tags, flatten(params.to_dict()))


def orchestration_tags() -> dict[str, str]:
    """Which Prefect flow run or DVC stage produced this run."""
    tags: dict[str, str] = {}
    # Only a process that imported Prefect can be inside a flow run; DVC stages skip the import.
    if "prefect" in sys.modules:
        from prefect.runtime import flow_run

        if flow_run.id:
            tags.update({"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)})
    if os.environ.get("KERASFLOW_DVC_STAGE"):
        tags["dvc.stage"] = os.environ["KERASFLOW_DVC_STAGE"]
    tags["kerasflow.entry"] = "prefect" if "prefect.flow_run_id" in tags else "dvc" if "dvc.stage" in tags else "python"
    return tags


def epoch_metric_name(name: str) -> str:
    """Keras' per-epoch names as the run shows them: `loss` is `train_loss`, so the last epoch's
    training values never read like the final (`test_`) ones; `val_*` stay as they are."""
    keep = name.startswith("val_") or name in ("learning_rate", "epoch_seconds", "samples_per_second")
    return name if keep else f"train_{name}"


def epoch_logger(run_id: str, samples: int) -> Any:
    """A Keras callback that logs each epoch's metrics, learning rate, seconds and samples per second to `run_id`.

    One synchronous `log_batch` per epoch (a few milliseconds on a local store): the epoch is in
    the record before the resumable backup says it is done, and nothing waits at the end.
    """
    import keras

    client = MlflowClient()

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            seconds = time.perf_counter() - self.started
            values = {name: float(value) for name, value in (logs or {}).items()}
            values.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
            values.update(epoch_seconds=seconds, samples_per_second=samples / seconds if seconds else 0.0)
            log_epoch(client, run_id, epoch, values)

    return MlflowEpochLogger()


def log_epoch(client: MlflowClient, run_id: str, epoch: int, values: dict[str, float]) -> None:
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    metrics = [Metric(epoch_metric_name(name), value, timestamp, epoch) for name, value in values.items()]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


def replay_epochs(run_id: str, rows: list[dict[str, Any]]) -> None:
    """Log earlier epochs (each a dict with `epoch` and its metrics, as in the epoch log) to `run_id`."""
    client = MlflowClient()
    for row in rows:
        values = {name: float(value) for name, value in row.items() if name != "epoch" and value == value}
        log_epoch(client, run_id, int(row["epoch"]), values)


def run_url(run_id: str, experiment_id: str) -> str | None:
    """A link to the run in the MLflow UI, when the store is a tracking server."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http://") or uri.startswith("https://"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def raw_signature(example: Any, config: ModelConfig) -> Any:
    """The MLflow signature on raw input: one named column per raw column, or the image tensor.

    Numeric columns are `double`, so a missing value (null) is accepted in any of them and CSV
    bodies parse; send numbers as floats (MLflow refuses to turn int64 into double). The label
    has the classes' own type.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    inputs = config.inputs
    if inputs.kind == "image":
        input_schema = Schema([TensorSpec(np.dtype("float32"), (-1, *inputs.shape), name="image")])
    else:
        input_schema = Schema(
            [ColSpec("double" if entry.kind == "numeric" else "string", entry.column) for entry in inputs.columns]
        )
    if config.classes:
        label_type = "string"
        if all(isinstance(label, bool) for label in config.classes):
            label_type = "boolean"
        elif all(isinstance(label, int) for label in config.classes):
            label_type = "long"
        outputs = [ColSpec(label_type, "label")] + [
            ColSpec("double", f"probability_{label}") for label in config.classes
        ]
    else:
        outputs = [ColSpec("double", "prediction")]
    return ModelSignature(inputs=input_schema, outputs=Schema(outputs))


def log_model(
    keras_file: Path, config: ModelConfig, example: Any, saved_model: Path | None = None, name: str = "model"
) -> str:
    """Log the model as an MLflow pyfunc that takes raw input; return its URI.

    The `.keras` file is the model's one artifact: the pyfunc wrapper (`pyfunc_model.py`,
    logged as model from code) loads it with safe_mode, and turns raw input into the model's
    inputs with the copy of `model_interface.py` logged beside it, the same code training used.
    The SavedModel export for TF Serving is logged beside it. Requirements are given, not
    inferred, which saves a subprocess that loads the model again.
    """
    import keras
    import pandas as pd
    import tensorflow as tf

    package = Path(__file__).parent
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"pandas=={pd.__version__}",
    ]
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(package / "pyfunc_model.py"),
        artifacts={"keras_model": str(keras_file), "model_interface": str(package / "model_interface.py")},
        model_config=config.to_dict(),
        signature=raw_signature(example, config),
        input_example=example,
        pip_requirements=requirements,
    )
    if saved_model is not None and saved_model.is_dir():
        mlflow.log_artifacts(str(saved_model), "saved_model")
    return info.model_uri


def artifact_digest(folder: str | Path) -> str:
    """SHA-256 over every file of a downloaded model (relative paths and bytes): the same files, the same digest.

    `registered_model_meta` is left out: MLflow's client writes it into each download (the
    registered name and version it was fetched as), it is not stored with the model.
    """
    import hashlib

    root = Path(folder)
    digest = hashlib.sha256()
    files = [item for item in root.rglob("*") if item.is_file() and item.name != "registered_model_meta"]
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def round_trip_difference(model_path: str | Path, example: Any, expected: Any, config: ModelConfig) -> float:
    """Largest difference between the logged model's predictions (loaded back through MLflow) and `expected`."""
    import numpy as np

    loaded = mlflow.pyfunc.load_model(str(model_path))
    outputs = model_outputs(loaded.predict(example), config)
    return float(np.max(np.abs(outputs - np.asarray(expected, dtype="float32").reshape(outputs.shape))))
