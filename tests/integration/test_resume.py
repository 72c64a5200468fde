"""Training killed with SIGKILL mid-epoch, in either phase, resumes that phase from its last finished epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import dvc_stage
from kerasflow import samples
from tests.conftest import REPO_ROOT, use_store
from tests.integration.servers import wait_for_backup

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def prepare(folder: Path, params: dict) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("ingest", "validate", "preprocess"):
        assert dvc_stage.main([stage]) == 0


def kill_when(folder: Path, phase: str, epochs: int) -> tuple[int, str]:
    """Start the train stage; SIGKILL it once `phase` has backed up `epochs` epochs (mid-way through the next).

    Returns the epochs the backup holds and the killed attempt's MLflow run id.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KERASFLOW_DVC_STAGE": "train"}
    with open(folder / "killed.log", "w") as log:
        killed = subprocess.Popen(
            [sys.executable, "-m", "flows.dvc_stage", "train"],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    backup = wait_for_backup(folder, killed, folder / "killed.log", epochs, phase)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    metadata = backup / phase / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"], json.loads((backup / "mlflow_run.json").read_text())["run_id"]


def resume_and_check(folder: Path, done_before_kill: int, killed_run: str, total_epochs: int) -> pd.DataFrame:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KERASFLOW_DVC_STAGE": "train"}
    resumed = subprocess.run(
        [sys.executable, "-m", "flows.dvc_stage", "train"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming training after epoch {done_before_kill}" in resumed.stderr
    # Only the epochs the kill cut short run again (the progress lines count from 1).
    assert f"epoch {done_before_kill + 1}/{total_epochs}" in resumed.stderr
    assert f"epoch {done_before_kill}/{total_epochs}" not in resumed.stderr
    run_id = json.loads((folder / "reports" / "mlflow_run.json").read_text())["run_id"]
    client = use_store(folder / "mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_trained"] == total_epochs
    for metric in ("epoch/train_loss", "epoch/val_loss", "epoch/train_accuracy"):
        assert [point.step for point in client.get_metric_history(run_id, metric)] == list(range(total_epochs)), metric
    assert client.get_run(killed_run).info.status == "FAILED"  # the killed attempt is not left RUNNING
    history = pd.read_csv(folder / "reports" / "history.csv")
    assert history["epoch"].tolist() == list(range(1, total_epochs + 1))  # as the log counts them
    assert not list(folder.glob(".kerasflow/backup/*"))  # cleaned up after success
    return history


def test_killed_training_resumes_and_logs_each_epoch_once(tmp_path, monkeypatch):
    epochs = 8
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"].update(epochs=epochs, batch_size=16, early_stopping={"enabled": False})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepare(tmp_path, params)

    done, killed_run = kill_when(tmp_path, "head", 3)
    assert 3 <= done < epochs and not (tmp_path / "models" / "model.keras").exists()
    history = resume_and_check(tmp_path, done, killed_run, epochs)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_a_kill_while_fine_tuning_resumes_fine_tuning(tmp_path, monkeypatch):
    """A backbone (random weights: no download) under a head, then fine-tuned: killed in the second phase."""
    head_epochs, tune_epochs = 2, 5
    samples.shapes(tmp_path / "images", per_class=16, size=32, seed=0)
    params = {
        "ingest": {"source": "image_folder", "path": "images", "image_shape": [32, 32, 3]},
        "validate": {"min_rows": 20},
        "model": {
            "backbone": {"name": "MobileNetV3Small", "weights": None},
            "layers": [{"type": "dropout", "rate": 0.1}],
        },
        "train": {
            "epochs": head_epochs,
            "batch_size": 8,
            "early_stopping": {"enabled": False},
            "fine_tune": {"epochs": tune_epochs, "learning_rate": 1e-4, "layers": 10},
        },
        "register": {"model_name": "resume-fine-tune", "require_beat_baseline": False},
    }
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepare(tmp_path, params)

    done, killed_run = kill_when(tmp_path, "fine_tune", head_epochs + 2)
    assert head_epochs + 2 <= done < head_epochs + tune_epochs
    resume_and_check(tmp_path, done, killed_run, head_epochs + tune_epochs)
