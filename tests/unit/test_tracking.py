"""Tracking helpers: store resolution, run status, secrets, lineage."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from kerasflow import tracking
from kerasflow.config import TrackingParams
from kerasflow.model_interface import InputColumn, ModelConfig, ModelInputs
from tests.unit.helpers import log_mixed_model


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(TrackingParams(), tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.resolve_tracking_uri(TrackingParams(), tmp_path) == "http://127.0.0.1:5999"


def test_runs_end_finished_or_failed_never_running(mlflow_store, tmp_path):
    experiment_id = tracking.configure(TrackingParams(experiment="e"), tmp_path)
    with tracking.open_run(experiment_id) as good:
        mlflow.log_metric("x", 1)
    with pytest.raises(RuntimeError):
        with tracking.open_run(experiment_id, run_id=good):
            raise RuntimeError("stage failed")
    with pytest.raises(KeyboardInterrupt):
        with tracking.open_run(experiment_id) as interrupted:
            raise KeyboardInterrupt
    client = mlflow.MlflowClient()
    assert client.get_run(good).info.status == "FAILED"  # reopened by a later stage that failed
    assert client.get_run(interrupted).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_experiment_artifacts_live_beside_a_local_store(mlflow_store, tmp_path):
    experiment_id = tracking.configure(TrackingParams(experiment="here"), tmp_path)
    location = mlflow.MlflowClient().get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert tracking.configure(TrackingParams(experiment="here"), tmp_path) == experiment_id


def test_unreachable_store_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    with pytest.raises(ConnectionError, match="not-a-folder"):
        tracking.configure(TrackingParams(), tmp_path)


def test_secrets_are_not_logged(mlflow_store, tmp_path):
    experiment_id = tracking.configure(TrackingParams(), tmp_path)
    with tracking.open_run(experiment_id) as run_id:
        tracking.log_params(run_id, {"train.epochs": 3, "storage.api_key": "s3cr3t", "db.PASSWORD": "x", "none": None})
    logged = mlflow.MlflowClient().get_run(run_id).data.params
    assert logged == {"train.epochs": "3"}  # no secrets, and no empty values


def test_git_tags_in_and_out_of_a_checkout(tmp_path):
    assert tracking.git_tags(tmp_path) == {}
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(tmp_path),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        check=True,
    )
    tags = tracking.git_tags(tmp_path)
    # MLflow's own tags, so its UI shows the commit and branch; a remote's URL only where there is one.
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] == "False"
    assert tags["mlflow.source.git.branch"] in ("main", "master") and "mlflow.source.git.repoURL" not in tags
    # Params and pipeline outputs are recorded with the run: they do not make the code dirty.
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "dvc.lock").write_text("x")
    (tmp_path / ".gitignore").write_text("/models\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}")
    assert tracking.git_tags(tmp_path)["git.dirty"] == "False"
    (tmp_path / "new.py").write_text("x")
    assert tracking.git_tags(tmp_path)["git.dirty"] == "True"


def test_orchestration_tags_outside_prefect(monkeypatch):
    monkeypatch.setenv("KERASFLOW_DVC_STAGE", "train")
    assert tracking.orchestration_tags() == {"dvc.stage": "train", "kerasflow.entry": "dvc"}


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path, monkeypatch):
    import time

    from tests.integration.servers import free_port

    port = free_port()  # a loopback port with nothing listening
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"MLflow tracking server http://127.0.0.1:{port} is not reachable"):
        tracking.configure(TrackingParams(), tmp_path)
    assert time.monotonic() - started < 10  # not MLflow's minutes of retries


def test_replayed_epochs_land_once_per_step_named_like_the_live_ones(mlflow_store, tmp_path):
    experiment_id = tracking.configure(TrackingParams(), tmp_path)
    with tracking.open_run(experiment_id) as run_id:
        tracking.replay_epochs(run_id, [{"epoch": 0, "loss": 2.0, "val_loss": 2.5}, {"epoch": 1, "loss": 1.0}])
    client = mlflow.MlflowClient()
    assert [(point.step, point.value) for point in client.get_metric_history(run_id, "epoch/train_loss")] == [
        (0, 2.0),
        (1, 1.0),
    ]
    assert [point.step for point in client.get_metric_history(run_id, "epoch/val_loss")] == [0]
    assert "loss" not in client.get_run(run_id).data.metrics


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_logged_model_is_a_pyfunc_on_raw_columns(mlflow_store, tmp_path, task):
    from tasks.datasets import predict

    experiment_id = tracking.configure(TrackingParams(), tmp_path)
    with tracking.open_run(experiment_id) as run_id:
        uri, model, prepared, example = log_mixed_model(tmp_path, task, export=task == "classification")
    loaded = mlflow.pyfunc.load_model(uri)
    assert [spec.name for spec in loaded.metadata.get_input_schema().inputs] == ["size", "color"]
    rows = example.copy()
    rows.loc[0, "size"] = np.nan  # imputed inside the model
    rows.loc[1, "color"] = "violet"  # out of vocabulary
    result = loaded.predict(rows)
    expected = predict(model, rows, prepared.inputs).ravel()
    if task == "regression":
        assert list(result.columns) == ["prediction"]
        np.testing.assert_allclose(result["prediction"], expected, atol=1e-5)
    else:
        assert list(result.columns) == ["label", "probability_0", "probability_1"]
        np.testing.assert_allclose(result["probability_1"], expected, atol=1e-5)
        np.testing.assert_allclose(result["probability_0"] + result["probability_1"], 1.0, atol=1e-6)
        assert result["label"].tolist() == [1 if value >= 0.5 else 0 for value in expected]  # the classes' type
        # The decision threshold is part of the model's config.
        strict = mlflow.pyfunc.load_model(uri, model_config={"threshold": 0.999}).predict(rows)
        assert set(strict["label"]) == {0}
        artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run_id)}
        assert "saved_model" in artifacts  # the TF Serving export beside the pyfunc
    assert uri.startswith("models:/")
    config = ModelConfig(task, prepared.inputs, [0, 1] if task == "classification" else None)
    assert tracking.round_trip_difference(uri, example, predict(model, example, prepared.inputs), config) < 1e-5
    assert tracking.round_trip_difference(uri, example, predict(model, example, prepared.inputs) + 0.1, config) > 0.09
    # Text in a numeric column is refused everywhere: by MLflow's signature check, naming the column, and
    # by the training code's own conversion inside the model (what `kerasflow predict` calls), naming the row too.
    garbage = example.astype({"size": object})
    garbage.loc[2, "size"] = "twelve"
    with pytest.raises(Exception, match=r"column size"):
        loaded.predict(garbage)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"column 'size', row 2: 'twelve' is not a number"):
        loaded.unwrap_python_model().predict(None, garbage)
    with pytest.raises(Exception, match=r"\['color'\]"):
        loaded.predict(example.drop(columns="color"))


def test_raw_signature_names_every_input_and_types_them_like_the_data():
    inputs = ModelInputs(
        "columns", (InputColumn("count", "numeric", "numeric"), InputColumn("city", "city", "categorical"))
    )
    signature = tracking.raw_signature(ModelConfig("classification", inputs, ["no", "yes"]))
    columns = {spec.name: spec for spec in signature.inputs.inputs}
    # double: CSV bodies parse, and a missing number (null) is accepted.
    assert columns["count"].type.name == "double" and columns["city"].type.name == "string"
    outputs = {spec.name: spec.type.name for spec in signature.outputs.inputs}
    assert outputs == {"label": "string", "probability_no": "double", "probability_yes": "double"}
    digits = tracking.raw_signature(ModelConfig("classification", inputs, list(range(10))))
    assert digits.outputs.inputs[0].type.name == "long"  # integer classes, integer labels
    regression = tracking.raw_signature(ModelConfig("regression", inputs))
    assert [spec.name for spec in regression.outputs.inputs] == ["prediction"]
    images = tracking.raw_signature(ModelConfig("classification", ModelInputs.images([4, 4, 1])))
    assert images.inputs.inputs[0].shape == (-1, 4, 4, 1) and images.inputs.inputs[0].name == "image"


@pytest.mark.parametrize("uri", ["models:/nothing@champion", "models:/nothing/3"])
def test_a_model_the_store_does_not_hold_is_named_as_one_error(mlflow_store, uri, tmp_path):
    with pytest.raises(tracking.ModelNotFound, match="no model to score with: .*nothing"):
        tracking.registered_identity(uri)
    with pytest.raises(tracking.ModelNotFound, match="no model to score with"):
        tracking.load_model(uri)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("psi/area (m²)", "psi/area _m__"), ("per_class/f1_été", "per_class/f1__t_"), ("psi/rooms", "psi/rooms")],
)
def test_metric_names_keep_only_what_mlflow_accepts(name, expected):
    from kerasflow.tracking import metric_key

    assert metric_key(name) == expected


def test_a_damaged_local_store_is_named_as_damaged_not_unreachable(tmp_path):
    from flows.training import is_transient
    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from kerasflow.errors import is_expected

    store = tmp_path / "mlflow.db"
    store.write_bytes(b"SQLite format 3\x00" + b"\x13" * 4096)  # a header, then garbage
    with pytest.raises(tracking.StoreDamaged) as raised:
        tracking.configure(TrackingParams(tracking_uri=f"sqlite:///{store}"), tmp_path)
    message = str(raised.value)
    assert f"sqlite:///{store} cannot be read" in message and "damaged" in message and "not reachable" not in message
    assert is_expected(raised.value) and not is_transient(raised.value)  # one line, and no retry


def test_a_password_in_the_tracking_uri_is_never_shown_or_stored(tmp_path, monkeypatch):
    from kerasflow import tracking

    uri = "http://alice:hunter2@mlflow.example:5000"
    assert tracking.redacted(uri) == "http://alice:***@mlflow.example:5000"
    assert tracking.redacted("http://token@host:5000") == "http://token@host:5000"  # a user name alone stays
    assert tracking.redacted("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert "hunter2" not in tracking.portable_uri(uri, tmp_path)  # what reports/mlflow_run.json keeps
    monkeypatch.setattr(tracking.mlflow, "get_tracking_uri", lambda: uri)
    assert tracking.run_url("r1", "1") == "http://alice:***@mlflow.example:5000/#/experiments/1/runs/r1"


def test_log_handlers_redact_a_password_in_any_uri_they_show_or_send(caplog):
    """Prefect's and MLflow's own log lines (a failed request names its URL) go through the same redaction as
    kerasflow's messages, on every handler: the terminal's and Prefect's API handler alike."""
    import logging

    from kerasflow.runtime import RedactCredentials, redact_logged_credentials

    logger = logging.getLogger("prefect.extra")
    handler = caplog.handler
    logger.addHandler(handler)
    try:
        redact_logged_credentials(("prefect.extra",))
        assert sum(isinstance(f, RedactCredentials) for f in handler.filters) == 1
        redact_logged_credentials(("prefect.extra",))  # once per handler, however often a flow starts
        assert sum(isinstance(f, RedactCredentials) for f in handler.filters) == 1
        try:
            raise ConnectionError("POST http://alice:s3cret@mlflow.example:5000/api failed")
        except ConnectionError:
            logger.exception("request to %s failed", "http://alice:s3cret@mlflow.example:5000")
        logger.warning("no credentials at http://mlflow.example:5000 stay as they are")
    finally:
        logger.removeHandler(handler)
        handler.filters = [f for f in handler.filters if not isinstance(f, RedactCredentials)]
    text = caplog.text
    assert "s3cret" not in text and "http://alice:***@mlflow.example:5000" in text
    assert "Traceback" in text and "no credentials at http://mlflow.example:5000" in text
