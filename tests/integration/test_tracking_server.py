"""The pipeline against a real `mlflow server` on loopback: logging, served artifacts, registry."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.servers import mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_pipeline_logs_and_registers_through_a_tracking_server(prefect_harness, tmp_path, monkeypatch):
    from flows.training import training_pipeline

    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    with mlflow_server(tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        result = training_pipeline(
            params_path=str(tmp_path / "params.yaml"),
            overrides={"train.epochs": 4, "register": {"thresholds": {}, "require_beat_baseline": False}},
        )
        assert result["registration"]["alias"] == "champion"
        assert (
            result["run_url"]
            == f"{uri}/#/experiments/{mlflow.get_experiment_by_name('kerasflow').experiment_id}/runs/{result['run_id']}"
        )

        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {item.path for item in client.list_artifacts(result["run_id"], "plots")} >= {"plots/training_curves.png"}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        model = mlflow.pyfunc.load_model("models:/kerasflow-digits-cnn@champion")
        (processed,) = tmp_path.glob(".kerasflow/cache/preprocess-*")
        x_test, y_test = np.load(processed / "x_test.npy"), np.load(processed / "y_test.npy")
        predictions = model.predict(x_test)["label"].astype(int).to_numpy()  # labels, from raw images
        assert (predictions == y_test).mean() == pytest.approx(result["metrics"]["accuracy"])
        assert list((tmp_path / "served-artifacts").iterdir())  # the server stored the artifacts
