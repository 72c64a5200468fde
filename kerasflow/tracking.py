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
import warnings
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


def raw_signature(example: Any, model_config: dict[str, Any]) -> Any:
    """The MLflow signature on raw input: one column per raw column, or the image tensor.

    Numeric columns are typed `any`: MLflow would refuse int64 values for a double column and
    missing values for a long one, while the model takes both (it converts, then imputes).
    """
    import numpy as np
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    inputs = model_config["inputs"]
    if inputs["kind"] == "image":
        input_schema = Schema([TensorSpec(np.dtype("float32"), (-1, *inputs["shape"]))])
    else:
        inferred = {spec.name: spec for spec in infer_signature(example).inputs.inputs}
        input_schema = Schema(
            [
                ColSpec(AnyType(), entry["column"], required=True)
                if entry["kind"] == "numeric"
                else ColSpec("string", entry["column"], required=inferred[entry["column"]].required)
                for entry in inputs["columns"]
            ]
        )
    classes = model_config.get("classes")
    if classes:
        outputs = [ColSpec("string", "label")] + [ColSpec("double", f"probability_{label}") for label in classes]
    else:
        outputs = [ColSpec("double", "prediction")]
    return ModelSignature(inputs=input_schema, outputs=Schema(outputs))


def log_model(
    keras_file: Path, model_config: dict[str, Any], example: Any, saved_model: Path | None = None, name: str = "model"
) -> str:
    """Log the model as an MLflow pyfunc that takes raw input; return its URI.

    The `.keras` file is the model's one artifact: the pyfunc wrapper (`pyfunc_model.py`,
    logged as model from code) loads it with safe_mode and only maps raw columns to the
    model's named inputs, so the signature is on the raw columns. The SavedModel export
    for TF Serving is logged beside it. Requirements are given, not inferred, which saves
    a subprocess that loads the model again.
    """
    import keras
    import pandas as pd
    import tensorflow as tf

    wrapper = Path(__file__).with_name("pyfunc_model.py")
    signature = raw_signature(example, model_config)
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"pandas=={pd.__version__}",
    ]
    with warnings.catch_warnings():
        # MLflow asks for predict() type hints, which would make it validate a raw DataFrame against list[...].
        warnings.filterwarnings("ignore", message=".*[Tt]ype hint.*", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(wrapper),
            artifacts={"keras_model": str(keras_file)},
            model_config=model_config,
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
        )
    if saved_model is not None and saved_model.is_dir():
        mlflow.log_artifacts(str(saved_model), "saved_model")
    return info.model_uri


def pyfunc_outputs(frame: Any, classes: list[Any] | None) -> Any:
    """The pyfunc wrapper's DataFrame back to the Keras model's output array (probabilities or values)."""

    if not classes:
        return frame["prediction"].to_numpy(dtype="float32").reshape(-1, 1)
    columns = [f"probability_{label}" for label in classes]
    values = frame[columns].to_numpy(dtype="float32")
    # A binary model has one sigmoid unit: the positive (second) class's probability.
    return values[:, 1:] if len(classes) == 2 else values


def round_trip_difference(model_uri: str, example: Any, expected: Any, classes: list[Any] | None) -> float:
    """Largest difference between the logged model's predictions (loaded back through MLflow) and `expected`."""
    import numpy as np

    loaded = mlflow.pyfunc.load_model(model_uri)
    outputs = pyfunc_outputs(loaded.predict(example), classes)
    return float(np.max(np.abs(outputs - np.asarray(expected, dtype="float32").reshape(outputs.shape))))
