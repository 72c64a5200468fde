"""The pipeline against a real `mlflow server` on loopback: logging, served artifacts, registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.servers import mlflow_server

pytestmark = pytest.mark.integration


def test_pipeline_logs_and_registers_through_a_tracking_server(prefect_harness, tmp_path, monkeypatch):
    from flows.training import training_pipeline

    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    with mlflow_server(tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        result = training_pipeline(
            params_path=str(tmp_path / "params.yaml"),
            overrides={"train.epochs": 4, "register": {"thresholds": {}, "require_beat_baseline": False}},
        )
        assert result.registration.alias == "champion"
        assert (
            result.run_url
            == f"{uri}/#/experiments/{mlflow.get_experiment_by_name('kerasflow').experiment_id}/runs/{result.run_id}"
        )

        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {item.path for item in client.list_artifacts(result.run_id, "plots")} >= {"plots/training_curves.png"}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        model = mlflow.pyfunc.load_model("models:/kerasflow-digits-cnn@champion")
        (processed,) = tmp_path.glob(".kerasflow/cache/preprocess-*")
        from tasks.preprocess import read_split

        test = read_split(processed, "test")
        predictions = model.predict(test.x)["label"].astype(int).to_numpy()  # labels, from raw images
        assert (predictions == test.y).mean() == pytest.approx(result.metrics["accuracy"])
        assert list((tmp_path / "served-artifacts").iterdir())  # the server stored the artifacts


@pytest.mark.slow
def test_a_tracking_server_lost_mid_training_fails_the_stage_quickly_naming_it(tmp_path):
    """The server killed (its whole process group) at epoch 5 of 60: train fails within about a minute (MLflow's
    own retry and timeout settings, tracking.request_timeout), names the server, and keeps the per-epoch backup,
    so a rerun resumes. It once froze, retried for 8 minutes, and exited after 12."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tasks.resume import Backup
    from tests.integration.servers import background, free_port, project_env, wait_for_backup, wait_healthy

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 60
    params["train"]["early_stopping"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(REPO_ROOT)
    for stage in ("ingest", "validate", "preprocess"):
        subprocess.run([sys.executable, "-m", "flows.dvc_stage", stage], cwd=tmp_path, env=env, check=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "served-artifacts"),
    ]  # fmt: skip
    with background(command, tmp_path / "server.log", dict(os.environ)) as server:
        wait_healthy(f"{uri}/health", server, tmp_path / "server.log")
        log = tmp_path / "train.log"
        with open(log, "w") as stream:
            train = subprocess.Popen(
                [sys.executable, "-m", "flows.dvc_stage", "train"],
                cwd=tmp_path, env={**env, "MLFLOW_TRACKING_URI": uri}, stdout=stream, stderr=subprocess.STDOUT,
            )  # fmt: skip
        backup = wait_for_backup(tmp_path, train, log, epochs=5)
        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs(client.get_experiment_by_name("kerasflow").experiment_id)
        assert len(client.get_metric_history(run.info.run_id, "epoch/train_loss")) >= 5  # logged to the server
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        train.wait(timeout=300)
        took = time.monotonic() - killed
    output = log.read_text()
    assert train.returncode == 1, output[-3000:]
    assert took < 90, f"train took {took:.0f} s to fail after the server went away"
    assert f"MLflow tracking store {uri} stopped answering" in output
    assert Backup(backup).completed_epochs() >= 5  # a rerun resumes from here
    assert not (tmp_path / "models").exists()  # nothing half-published
