"""Training killed with SIGKILL mid-epoch resumes from its last finished epoch when run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from flows import dvc_stage
from tests.conftest import REPO_ROOT, use_store

pytestmark = [pytest.mark.slow, pytest.mark.integration]
EPOCHS = 8


def test_killed_training_resumes_and_logs_each_epoch_once(tmp_path, monkeypatch):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"].update(epochs=EPOCHS, batch_size=16, early_stopping={"enabled": False})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for stage in ("ingest", "validate", "preprocess"):
        assert dvc_stage.main([stage]) == 0

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KERASFLOW_DVC_STAGE": "train"}
    command = [sys.executable, "-m", "flows.dvc_stage", "train"]
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    metadata = None
    while metadata is None:
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        found = list(tmp_path.glob(".kerasflow/backup/*/training_metadata.json"))
        if found and json.loads(found[0].read_text() or "{}").get("epoch", 0) >= 3:
            metadata = found[0]
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # mid-way through the next epoch
    killed.wait(timeout=30)
    done_before_kill = json.loads(metadata.read_text())["epoch"]
    assert 3 <= done_before_kill < EPOCHS and not (tmp_path / "models" / "model.keras").exists()
    killed_run = json.loads((metadata.parent / "mlflow_run.json").read_text())["run_id"]

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming training after epoch {done_before_kill}" in resumed.stderr

    run_id = json.loads((tmp_path / "reports" / "mlflow_run.json").read_text())["run_id"]
    client = use_store(tmp_path / "mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_trained"] == EPOCHS
    for metric in ("loss", "val_loss", "accuracy"):
        assert [point.step for point in client.get_metric_history(run_id, metric)] == list(range(EPOCHS)), metric
    assert client.get_run(killed_run).info.status == "FAILED"  # the killed attempt is not left RUNNING
    history = pd.read_csv(tmp_path / "reports" / "history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS))
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert not list(tmp_path.glob(".kerasflow/backup/*"))  # cleaned up after success
