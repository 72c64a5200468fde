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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from kerasflow.config import Params, TrackingParams
from kerasflow.errors import ExpectedError, write_error
from kerasflow.model_interface import ModelConfig, model_outputs
from kerasflow.runtime import redact_credentials as redacted  # the one redaction, shared with the log filter

logger = logging.getLogger(__name__)

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# The MLflow UI opens a model-training experiment on its training views, not the GenAI ones.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def resolve_tracking_uri(params: TrackingParams, project_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else params (a relative sqlite path is taken from the project root)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str((project_root / uri[len(prefix) :]).resolve())
    return uri


def portable_uri(uri: str, project_root: Path) -> str:
    """A sqlite store inside the project as a path relative to it (`sqlite:///mlflow.db`); any other as it is,
    without the password it may carry."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri.removeprefix(prefix))
        if path.is_absolute() and path.is_relative_to(Path(project_root).resolve()):
            return prefix + path.relative_to(Path(project_root).resolve()).as_posix()
    return redacted(uri)


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def lock_beside_store(uri: str, purpose: str, timeout: float = -1) -> Any:
    """A `filelock.FileLock` at `.STORE.PURPOSE.lock` beside a local store (an SQLite file, a folder), which every
    process on this machine sees (DVC stages, flow runs, studies); None for a store on a server."""
    if not is_local_store(uri):
        return None
    from filelock import FileLock

    store = Path(uri.removeprefix("sqlite:///").removeprefix("file://"))
    return FileLock(str(store.with_name(f".{store.name}.{purpose}.lock")), timeout=timeout)


# MLflow's retries of a failed call to a tracking server: this many, waiting 1 s, then 2 s.
HTTP_RETRIES = 2


def http_settings(request_timeout: int) -> dict[str, str]:
    """MLflow's own HTTP settings for a tracking server, so that one call, retries included, is over within about
    `request_timeout` seconds: a server that is down, or stops answering, fails the stage instead of hanging it."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(2, request_timeout // (HTTP_RETRIES + 1))),
    }


def configure(params: TrackingParams, project_root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; return the experiment id."""
    uri = resolve_tracking_uri(params, project_root)
    if uri.startswith(("http://", "https://")):
        for name, value in http_settings(params.request_timeout).items():
            os.environ.setdefault(name, value)  # the user's own setting wins
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with store_setup_lock(uri):
        try:
            client = MlflowClient()
            experiment = client.get_experiment_by_name(params.experiment)
        except Exception as error:  # The store is unreachable or broken: say which one.
            damage = database_damage(error) if is_local_store(uri) else None
            if damage:
                raise StoreDamaged(
                    f"MLflow tracking store {redacted(uri)} cannot be read: {damage}. The file is damaged: move it "
                    "aside (a new store is made in its place) or restore it from a backup"
                ) from error
            kind = "server" if uri.startswith(("http://", "https://")) else "store"
            raise ConnectionError(
                f"MLflow tracking {kind} {redacted(uri)} is not reachable ({redacted(short_error(error))}); start it, "
                "or unset MLFLOW_TRACKING_URI to use the local sqlite store"
            ) from error
        if experiment is not None:
            if experiment.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
                client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
            return experiment.experiment_id
        # Local stores keep artifacts beside the database, not wherever the process happened to start.
        location = (project_root / "mlartifacts").resolve().as_uri() if is_local_store(uri) else None
        return client.create_experiment(params.experiment, artifact_location=location, tags=EXPERIMENT_KIND)


class StoreDamaged(ExpectedError):
    """A local store's database file is there but is not a readable database: no retry helps."""


def database_damage(error: BaseException | None) -> str | None:
    """SQLite's own words when a store's file is not a readable database ("database disk image is malformed",
    "file is not a database"), found in the error's chain; None for anything else."""
    markers = ("malformed", "not a database", "file is encrypted")
    while error is not None:
        for line in str(error).splitlines():
            if any(marker in line for marker in markers):
                return line.strip().removeprefix("(sqlite3.DatabaseError) ")[:200]
        error = error.__cause__ or error.__context__
    return None


def short_error(error: BaseException) -> str:
    """The last line of an error's message (requests' retry errors run to many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


@contextlib.contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """For a local sqlite store, one process at a time creates its tables and the experiment: two pipelines
    starting together on a new store (`dvc queue start -j 2`, parallel deployment runs) would otherwise both
    run MLflow's schema migrations, and one fails ("duplicate column name")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    store = Path(uri.removeprefix("sqlite:///"))
    lock = lock_beside_store(uri, "setup", timeout=300)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as error:
        if (unwritable := write_error(error, store.parent)) is not None:  # not worth a retry: named, at once
            raise unwritable from error
        raise ConnectionError(f"MLflow tracking store {uri} is not reachable: {error}") from error
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def open_run(
    experiment_id: str, run_id: str | None = None, run_name: str | None = None, system_metrics: bool = False
) -> Iterator[str]:
    """Start a new run (run_id None, named `run_name` or after the orchestrator's run) or reopen one;
    close it FINISHED, or FAILED on any exception. With `system_metrics`, MLflow samples CPU,
    memory and disk (and GPU, where there is one) every second while the run is open."""
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=None if run_id else (run_name or default_run_name()),
        log_system_metrics=system_metrics,
    )
    try:
        yield run.info.run_id
    except BaseException:
        end_failed()
        raise
    mlflow.end_run(status="FINISHED")


def end_failed() -> None:
    """End the active run FAILED; when the store itself is gone, say so and leave the original error be."""
    try:
        mlflow.end_run(status="FAILED")
    except Exception as error:  # noqa: BLE001 (the error being raised matters more)
        logger.warning("could not mark the MLflow run FAILED: %s", short_error(error))


def create_run(experiment_id: str, tags: dict[str, str], params_text: str, run_name: str | None = None) -> str:
    """Create a run that stays RUNNING until a stage closes it (or `mark_failed`), with the resolved params file."""
    client = MlflowClient()
    run_id = client.create_run(experiment_id, tags=tags, run_name=run_name or default_run_name()).info.run_id
    try:
        client.log_text(run_id, params_text, "params.yaml")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def default_run_name() -> str:
    """The Prefect flow run's name; for DVC, its experiment's name or `dvc-repro-<time>`; else `kerasflow-<time>`."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    orchestrator = orchestration_tags()
    if "prefect.flow_run_name" in orchestrator:
        return orchestrator["prefect.flow_run_name"]
    if "dvc.stage" in orchestrator:
        return os.environ.get("DVC_EXP_NAME") or f"dvc-repro-{stamp}"
    return f"kerasflow-{stamp}"


def mark_failed(run_id: str, killed: bool = False) -> None:
    """Mark a run FAILED (KILLED: stopped from outside, by Ctrl-C or SIGTERM) from outside it (e.g. a flow that
    failed after the run closed); when the store itself is gone, say so and leave the error being raised be."""
    status = "KILLED" if killed else "FAILED"
    try:
        MlflowClient().set_terminated(run_id, status=status)
    except Exception as error:  # noqa: BLE001
        logger.warning("could not mark MLflow run %s %s: %s", run_id, status, short_error(error))


def metric_key(name: str) -> str:
    """`name` as MLflow accepts a metric name: letters, digits, `_ - . / ` and spaces kept, anything else (`(`,
    `é`, `:`) made `_`."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def log_params(run_id: str, flat_params: dict[str, Any]) -> None:
    """Log flattened params to the run, leaving out anything named like a secret."""
    # Empty values say nothing and show as blanks in the UI: left out.
    safe = {name: value for name, value in flat_params.items() if not is_secret(name) and value is not None}
    mlflow.log_params(safe, run_id=run_id)


# What `git.dirty` leaves out: the params (logged with every run) and what the pipeline writes.
NOT_CODE = (
    *(f":(exclude){path}" for path in ("params.yaml", "dvc.lock", "data", "reports", "models", "runs", "*.db")),
    ":(exclude,glob)**/.gitignore",  # DVC adds its outputs to .gitignore files
)


def git_tags(project_root: Path) -> dict[str, str]:
    """MLflow's own git tags (its UI shows them), and whether the code in the work tree differed from the commit
    (`git.dirty`: changes to params.yaml and pipeline outputs do not count); empty outside a checkout."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments], cwd=project_root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        tags = {
            "mlflow.source.git.commit": git("rev-parse", "HEAD"),
            "mlflow.source.git.branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "git.dirty": str(bool(git("status", "--porcelain", "--", ".", *NOT_CODE))),
        }
    except (OSError, subprocess.SubprocessError):
        return {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        tags["mlflow.source.git.repoURL"] = git("remote", "get-url", "origin")
    return tags


def source_tags() -> dict[str, str]:
    """MLflow's source and user tags: what ran the pipeline, and who."""
    import getpass

    orchestrator = orchestration_tags()
    if "prefect.flow_run_id" in orchestrator:
        source, kind = "flows/training.py:training_pipeline (Prefect flow)", "JOB"
    elif "dvc.stage" in orchestrator:
        source, kind = "dvc.yaml (dvc repro)", "PROJECT"
    else:
        source, kind = "flows/stages (Python)", "LOCAL"
    with contextlib.suppress(Exception):  # getuser fails in some containers with no user name
        orchestrator["mlflow.user"] = getpass.getuser()
    return {"mlflow.source.name": source, "mlflow.source.type": kind, **orchestrator}


def lineage_tags(project_root: Path) -> dict[str, str]:
    """Lineage of a pipeline run: git, the Prefect flow run or DVC stage, MLflow's source and user."""
    return {**git_tags(project_root), **source_tags()}


def begin_pipeline_run(
    params: Params,
    project_root: Path,
    workdir: Path,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> str:
    """Create the MLflow run of a whole pipeline run (left RUNNING), with lineage and the resolved params file.
    `tags` add to (or override) the lineage, e.g. the parent run of a study's retrained best trial."""
    import yaml

    experiment_id = configure(params.tracking, project_root)
    tags = {
        **lineage_tags(project_root),
        "kerasflow.workdir": str(workdir),
        "registry.model": params.register_.model_name,
        **(tags or {}),
    }
    return create_run(experiment_id, tags, yaml.safe_dump(params.to_dict(), sort_keys=False), run_name)


def orchestration_tags() -> dict[str, str]:
    """Which Prefect flow run or DVC stage produced this run."""
    tags: dict[str, str] = {}
    # Only a process that imported Prefect can be inside a flow run; DVC stages skip the import.
    if "prefect" in sys.modules:
        from prefect.runtime import flow_run

        if flow_run.id:
            tags.update({"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)})
            # A link only to a server that outlives the run (Prefect's temporary one does not).
            if os.environ.get("PREFECT_API_URL") and flow_run.ui_url and not str(flow_run.ui_url).startswith("None"):
                tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    if os.environ.get("KERASFLOW_DVC_STAGE"):
        tags["dvc.stage"] = os.environ["KERASFLOW_DVC_STAGE"]
        # `dvc exp run` (queued or not): the experiment, and the commit it started from.
        for variable, tag in (("DVC_EXP_NAME", "dvc.experiment"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
            if os.environ.get(variable):
                tags[tag] = os.environ[variable]
    tags["kerasflow.entry"] = "prefect" if "prefect.flow_run_id" in tags else "dvc" if "dvc.stage" in tags else "python"
    return tags


EPOCH_SECTION = "epoch"


def epoch_metric_name(name: str) -> str:
    """Keras' per-epoch names as the run shows them: `epoch/train_loss`, `epoch/val_loss`, `epoch/learning_rate`.

    The `epoch/` prefix puts the learning curves in a section of their own at the top of the MLflow
    UI's charts, before the single-valued final metrics (`test_*`, `baseline_*`), and a last epoch's
    training value never reads like a final one.
    """
    plain = name.startswith("val_") or name in ("learning_rate", "seconds", "samples_per_second")
    return f"{EPOCH_SECTION}/{name if plain else 'train_' + name}"


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
            values.update(seconds=seconds, samples_per_second=samples / seconds if seconds else 0.0)
            try:
                log_epoch(client, run_id, epoch, values)
            except Exception as error:  # the store went away mid-training: stop now, keep the backup
                uri = mlflow.get_tracking_uri()
                raise ConnectionError(
                    f"MLflow tracking store {uri} stopped answering when epoch {epoch + 1} was logged "
                    f"({short_error(error)}); the per-epoch backup is kept: run again to resume from epoch {epoch}"
                ) from error

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
        return f"{redacted(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def raw_signature(config: ModelConfig) -> Any:
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
    keras_file: Path,
    config: ModelConfig,
    example: Any,
    saved_model: Path | None = None,
    name: str = "model",
    step: int = 0,
    statistics: Path | None = None,
) -> Any:
    """Log the model as an MLflow pyfunc that takes raw input; return MLflow's ModelInfo (URI and id).

    MLflow links the run's metrics logged at the model's `step` to it: give the number of epochs
    trained (one past the last epoch's step), so no per-epoch value attaches to the model; its
    final metrics are linked explicitly (`log_model_metrics`).

    The `.keras` file is the model's one artifact: the pyfunc wrapper (`pyfunc_model.py`,
    logged as model from code) loads it with safe_mode, and turns raw input into the model's
    inputs with the copy of `model_interface.py` logged beside it, the same code training used (and
    `model_layers.py`, kerasflow's own layer classes, likewise).
    The training split's statistics (`statistics`) travel with it for drift checks.
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
        model_type=config.task,
        step=step,
        python_model=str(package / "pyfunc_model.py"),
        artifacts={
            "keras_model": str(keras_file),
            "model_interface": str(package / "model_interface.py"),
            # kerasflow's own layer classes, registered with Keras before the `.keras` file loads.
            "model_layers": str(package / "model_layers.py"),
            # The training split's per-column statistics: every version carries what its drift is measured against.
            **({"training_statistics": str(statistics)} if statistics else {}),
        },
        model_config=config.to_dict(),
        signature=raw_signature(config),
        input_example=example,
        pip_requirements=requirements,
    )
    if saved_model is not None and saved_model.is_dir():
        mlflow.log_artifacts(str(saved_model), "saved_model")
    return info


def log_model_metrics(metrics: dict[str, float], model_id: str, step: int = 0, dataset: Any = None) -> None:
    """Final metrics on the active run, linked to the logged model (its page in the MLflow UI lists them)."""
    mlflow.log_metrics(
        {name: float(value) for name, value in metrics.items()}, step=step, model_id=model_id, dataset=dataset
    )


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


# The model registry: versions, aliases, the files a version holds.


def register_version(model_uri: str, model_name: str, run_id: str, tags: dict[str, str] | None = None) -> str:
    """Create a registry version for the logged model (tagged with its run, and `tags`); return its number."""
    version = mlflow.register_model(model_uri, model_name, tags={"run_id": run_id, **(tags or {})})
    return str(version.version)


def version_for_alias(model_name: str, alias: str) -> str | None:
    """The version `alias` points at now, or None (no such alias or model)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def apply_decision(
    model_name: str, version: str, decision: Any, description: str = "", digest: str | None = None
) -> None:
    """Record the gate's verdict (`kerasflow.records.Decision`) on the version: a tag per check, the reasons in
    its description, and the SHA-256 of the files train checked (`digest`, which every later load verifies); then
    move its alias (last, so a failure leaves the alias be)."""
    client = MlflowClient()
    client.set_model_version_tag(model_name, version, "kerasflow.decision", decision.alias)
    if digest:
        client.set_model_version_tag(model_name, version, DIGEST_TAG, digest)
    for check, ok in decision.checks.items():
        client.set_model_version_tag(model_name, version, f"kerasflow.check.{check}", "passed" if ok else "failed")
    if description:
        client.update_model_version(model_name, version, description=description)
    client.set_registered_model_alias(model_name, decision.alias, version)


@contextlib.contextmanager
def downloaded(model_uri: str) -> Iterator[str]:
    """The files `model_uri` (a logged model or a registered version) holds, in a temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        yield mlflow.artifacts.download_artifacts(model_uri, dst_path=folder)


def registered_digest(model_uri: str) -> str:
    """`artifact_digest` of the files a registered version holds."""
    with downloaded(model_uri) as local:
        return artifact_digest(local)


# The version tag holding the SHA-256 of the files train checked (set at registration).
DIGEST_TAG = "kerasflow.sha256"


class ModelTampered(ExpectedError):
    """A registered version's files are not the ones train checked and registration recorded."""


def recorded_digest(model_name: str, version: str) -> str | None:
    """The SHA-256 of a registered version's files, as registration recorded it (None: registered without one)."""
    return MlflowClient().get_model_version(model_name, version).tags.get(DIGEST_TAG)


def load_version(model_name: str, version: str) -> Any:
    """A registered version as its pyfunc model (with its own copy of the model code), loaded from files whose
    SHA-256 is the one recorded at registration (ModelTampered if not; versions registered before the digest was
    recorded load as they are); one whose model file carries code is a ModelRefused naming the version."""
    import tempfile

    uri = f"models:/{model_name}/{version}"
    expected = recorded_digest(model_name, version)
    # The files are checked, then loaded from that same folder: what runs is what was checked. The folder lives
    # as long as the model does (it reads its training statistics from it when asked).
    files = tempfile.TemporaryDirectory(prefix="kerasflow-model-")
    try:
        local = mlflow.artifacts.download_artifacts(uri, dst_path=files.name)
        found = artifact_digest(local)
        if expected and found != expected:
            raise ModelTampered(
                f"{uri}: its files (sha256 {found[:12]}) are not the ones registered (sha256 {expected[:12]}): "
                "they changed in the artifact store since; refusing to load them"
            )
        model = mlflow.pyfunc.load_model(local)
    except Exception as error:
        files.cleanup()
        refused(uri, error)
        raise
    model._kerasflow_files = files  # noqa: SLF001 (kept alive with the model)
    return model


class ModelRefused(ExpectedError):
    """A model file that carries Python code (a Lambda layer): Keras' safe mode refuses it, and so does kerasflow."""


def refused(uri: str, error: BaseException) -> None:
    """Raise ModelRefused naming `uri` when `error` is Keras' safe-mode refusal (whose advice, to turn safe mode
    off, kerasflow does not repeat); return otherwise."""
    found: BaseException | None = error
    while found is not None:
        if "safe_mode" in str(found) or "arbitrary code execution" in str(found):
            raise ModelRefused(
                f"{uri}: refused to load: its model file carries Python code (a Lambda layer), which kerasflow "
                "never runs; register a model without it"
            ) from None
        found = found.__cause__ or found.__context__


class ModelNotFound(ExpectedError, LookupError):
    """The model a URI names is not in the store (no such version, alias or registered model)."""


def registered_identity(model_uri: str, problem: str = "no model to score with") -> tuple[str, str, str]:
    """(name, version, run id) of a registered model URI (`models:/name@alias`, `models:/name/3`); one the store
    does not hold is a ModelNotFound, its message starting with `problem`."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    path = model_uri.removeprefix("models:/")
    name, _, rest = path.partition("@") if "@" in path else path.rpartition("/")
    try:
        if "@" in path:
            version = client.get_model_version_by_alias(name, rest)
        else:
            version = client.get_model_version(name, rest)
    except MlflowException as error:
        raise ModelNotFound(f"{problem}: {error.message}") from None
    return version.name, str(version.version), version.run_id


def run_record(run_id: str) -> tuple[dict[str, str], dict[str, float]]:
    """A run's tags and (latest) metrics."""
    run = MlflowClient().get_run(run_id)
    return dict(run.data.tags), dict(run.data.metrics)


def download_run_file(run_id: str, artifact_path: str, folder: Path) -> Path:
    """One of a run's artifacts (a file or a folder) downloaded into `folder`; OSError when the run has none."""
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=folder))
    except MlflowException as error:
        raise OSError(error.message) from None


def load_model(model_uri: str) -> Any:
    """Any model URI (`models:/...`, `runs:/...`, a local folder) as its pyfunc model; a registered version's files
    are checked against the digest recorded at registration first (`load_version`)."""
    from mlflow.exceptions import MlflowException

    try:
        if model_uri.startswith("models:/"):
            name, version, _ = registered_identity(model_uri)
            return load_version(name, version)
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as error:
        refused(model_uri, error)
        raise ModelNotFound(f"no model to score with: {error.message}") from None
    except Exception as error:
        refused(model_uri, error)
        raise


def rejected_input(error: Exception) -> str | None:
    """Why a pyfunc model refused its input (MLflow's INVALID_PARAMETER_VALUE), or None for any other error."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException) and error.error_code == "INVALID_PARAMETER_VALUE":
        return error.message
    return None


def round_trip_difference(model_path: str | Path, example: Any, expected: Any, config: ModelConfig) -> float:
    """Largest difference between the logged model's predictions (loaded back through MLflow) and `expected`."""
    import numpy as np

    loaded = mlflow.pyfunc.load_model(str(model_path))
    outputs = model_outputs(loaded.predict(example), config)
    return float(np.max(np.abs(outputs - np.asarray(expected, dtype="float32").reshape(outputs.shape))))


def input_schema(config: ModelConfig) -> Any:
    """The model's input schema, as its signature has it (for the datasets logged with a run)."""
    return raw_signature(config).inputs


def log_split(path: Path, name: str, rows: int, schema: Any, context: str) -> Any:
    """A split as an MLflow dataset input of the active run: its digest is the md5 DVC records for the file."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from kerasflow.io import file_md5

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that the path "can be interpreted in multiple
        # ways": both are the same class.
        warnings.filterwarnings("ignore", message=".*interpreted in multiple ways.*")
        source = resolve_dataset_source(Path(path).resolve().as_uri())
    dataset = MetaDataset(source, name=name, digest=file_md5(path), schema=schema)
    mlflow.log_input(dataset, context=context, tags={"rows": str(rows), "file": path.name})
    return dataset


def current_uri() -> str:
    """The tracking URI in use (after `configure`)."""
    return mlflow.get_tracking_uri()


def run_tags(run_id: str) -> dict[str, str]:
    return dict(MlflowClient().get_run(run_id).data.tags)


def describe_logged_model(model_id: str, text: str) -> None:
    """The logged model's page (MLflow's "Logged models") carries `text` as its description."""
    mlflow.set_logged_model_tags(model_id, {"mlflow.note.content": text})


def describe_registered_model(name: str, text: str) -> None:
    MlflowClient().update_registered_model(name, description=text)


def check_logged_model(model_uri: str, example: Any, expected: Any, config: ModelConfig) -> tuple[str, float]:
    """The logged model's files as the store holds them: their digest, and how far their predictions for
    `example`, loaded back through MLflow, stray from `expected` (the serving smoke test)."""
    with downloaded(model_uri) as local:
        return artifact_digest(local), round_trip_difference(local, example, expected, config)


# Runs addressed by id, from any process: a study's run and its trials' (a Dask worker is a process of its own).


def use_uri(uri: str) -> None:
    """Point this process at the tracking store `uri` (a worker process that did not `configure`)."""
    mlflow.set_tracking_uri(uri)


def start_child_run(experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """A run that stays RUNNING until `finish_run`, nested under `tags["mlflow.parentRunId"]`."""
    return MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id


def finish_run(run_id: str, note: str | None = None, failed: bool = False) -> None:
    """Close a run by id, FINISHED (or FAILED), with `note` as its description."""
    client = MlflowClient()
    if note is not None:
        client.set_tag(run_id, "mlflow.note.content", note)
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def run_exists(run_id: str) -> bool:
    """Whether the store holds the run, not deleted."""
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def reopen_run(experiment_id: str, run_id: str) -> None:
    """Mark a run RUNNING again (a study continued); its children a kill left RUNNING are closed KILLED, tagged
    `trial.state: interrupted`."""
    client = MlflowClient()
    client.update_run(run_id, status="RUNNING")
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "trial.state", "interrupted")
            client.set_terminated(run.info.run_id, status="KILLED")


# Recording on a run, addressed by its id: the stage's open run, a study's parent run, a trial's, a pipeline run
# from outside it. (Only the model and the datasets are logged to the active run, as MLflow's APIs for them want.)

# MLflow takes at most this many tags in one request.
TAGS_PER_REQUEST = 100


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(key, str(value)) for key, value in tags.items()]
    for start in range(0, len(items), TAGS_PER_REQUEST):
        MlflowClient().log_batch(run_id, tags=items[start : start + TAGS_PER_REQUEST])


def log_metrics(run_id: str, values: dict[str, float]) -> None:
    """Single-valued metrics (step 0), in one request."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    metrics = [Metric(key, float(value), timestamp, 0) for key, value in values.items()]
    MlflowClient().log_batch(run_id, metrics=metrics)


def log_files(run_id: str, *paths: Path, folder: str | None = None) -> None:
    """Each file as an artifact of the run (in `folder`)."""
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), folder)


def log_text(run_id: str, text: str, name: str) -> None:
    MlflowClient().log_text(run_id, text, name)


def log_dict(run_id: str, payload: dict[str, Any], name: str) -> None:
    MlflowClient().log_dict(run_id, payload, name)


def load_dict(run_id: str, name: str) -> dict[str, Any]:
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")


def log_table(run_id: str, frame: Any, name: str) -> None:
    """A table artifact the MLflow UI shows as one (a pandas DataFrame)."""
    MlflowClient().log_table(run_id, frame, name)


def describe_run(run_id: str, decision: dict[str, Any] | None = None) -> None:
    """Write the run's description (`mlflow.note.content`) from what the run holds now."""
    from kerasflow.notes import run_description

    client = MlflowClient()
    run = client.get_run(run_id)
    client.set_tag(run_id, "mlflow.note.content", run_description(run.data.tags, run.data.metrics, decision))
