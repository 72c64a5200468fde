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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from kerasflow.config import TrackingParams

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
    safe = {name: ("" if value is None else value) for name, value in flat_params.items() if not is_secret(name)}
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


def epoch_logger() -> Any:
    """A Keras callback that logs every epoch's metrics to the active MLflow run."""
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):
        # Logged in the background, so a store round trip per epoch does not stall training.
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs:
                values = {name: float(value) for name, value in logs.items()}
                mlflow.log_metrics(values, step=epoch, synchronous=False)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            mlflow.flush_async_logging()

    return MlflowEpochLogger()


def replay_epochs(rows: list[dict[str, Any]]) -> None:
    """Log earlier epochs (each a dict with `epoch` and its metrics) to the active run."""
    for row in rows:
        values = {name: float(value) for name, value in row.items() if name != "epoch"}
        mlflow.log_metrics(values, step=int(row["epoch"]))


def run_url(run_id: str, experiment_id: str) -> str | None:
    """A link to the run in the MLflow UI, when the store is a tracking server."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http://") or uri.startswith("https://"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def log_keras_model(model: Any, example: Any, artifact_path: str = "model") -> str:
    """Log a Keras model with the Keras flavor, its signature and an input example; return its URI.

    The model is saved with `mlflow.keras.save_model` into a folder made here and logged
    as run artifacts, because `mlflow.keras.log_model` with an input example fails on a
    folder it never creates (mlflow/mlflow#16183). The requirements are given, not
    inferred, which saves a subprocess that loads the model again.
    """
    import tempfile

    import keras
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example, verbose=0))
    requirements = [f"mlflow=={mlflow.__version__}", f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / artifact_path
        target.mkdir()
        mlflow.keras.save_model(
            model, str(target), signature=signature, input_example=example, pip_requirements=requirements
        )
        mlflow.log_artifacts(str(target), artifact_path)
    return f"runs:/{mlflow.active_run().info.run_id}/{artifact_path}"
