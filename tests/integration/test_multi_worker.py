"""Training across workers on TensorFlow's own engine: `train.workers: 2` with `train.distribute: multi_worker`
starts two real worker processes (MultiWorkerMirroredStrategy, gRPC on loopback) under `dvc repro` and under a
Prefect flow run; one MLflow run, the chief's saved weights equal every worker's, a registered version that
`kerasflow reproduce` rebuilds; a worker killed with SIGKILL fails the stage by name and the rerun resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest
import yaml

from tasks.accelerator import weights_digest
from tests.conftest import use_store
from tests.integration.servers import BIN, clone_project, project_env, run, wait_for_backup

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL = "kerasflow-digits-cnn"


def set_params(root: Path, **train) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["preprocess"]["row_group_rows"] = 128  # the digits' 1,259 training rows in 10 row groups: 5 per worker
    params["train"].update(distribute="multi_worker", workers=2, **train)
    params["register"].update(thresholds={}, require_beat_baseline=False, require_beat_champion=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The digits CNN trained by two workers through `dvc repro`, then committed."""
    root = tmp_path_factory.mktemp("p")
    env = project_env(root)
    clone_project(root, env)
    set_params(root, epochs=4, early_stopping={"enabled": False})
    run(["git", "commit", "-qam", "two workers"], root, env)
    repro = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "the run's lock file and reports"], root, env)
    return root, env, repro.stdout + repro.stderr


def test_two_workers_train_in_step_into_one_run_and_one_model(project):
    root, env, output = project
    assert "starting 2 training workers on ports " in output and "listens on every interface" in output
    digests = re.findall(r"final weights sha256 ([0-9a-f]{64})", output)  # the chief's line, passed on
    agreed = re.search(r"all 2 workers ended with the same weights \(sha256 ([0-9a-f]{64})\)", output)
    assert agreed and digests == [agreed.group(1)], output[-3000:]
    # The model the chief saved holds those weights.
    saved = keras.saving.load_model(root / "models" / "model.keras")
    assert weights_digest(saved) == agreed.group(1)

    client = use_store(root / "mlflow.db")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert len(runs) == 1  # the chief's alone
    run_data = runs[0].data
    assert runs[0].info.status == "FINISHED"
    assert run_data.tags["train.strategy"] == "MultiWorkerMirroredStrategy"
    assert run_data.tags["train.workers"] == "2" and run_data.tags["train.per_replica_batch"] == "16"
    assert run_data.tags["train.replicas"] == "2"
    history = pd.read_csv(root / "reports" / "history.csv")
    assert len(history) == 4 and history["loss"].iloc[-1] < history["loss"].iloc[0]
    metrics = json.loads((root / "reports" / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] > 0.85  # ten classes: chance is 0.1
    assert [point.step for point in client.get_metric_history(runs[0].info.run_id, "epoch/train_loss")] == [0, 1, 2, 3]
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    assert version.run_id == runs[0].info.run_id
    # The other worker left nothing behind.
    assert not list((root / ".kerasflow" / "backup").glob("*"))


def test_the_version_two_workers_trained_rebuilds_exactly(project):
    root, env, _ = project
    result = run([str(BIN / "kerasflow"), "reproduce", f"models:/{MODEL}/1"], root, env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "match within 1e-06: metrics differ by at most 0," in result.stdout


def test_metrics_agree_with_one_process_on_the_same_global_batch(project):
    root, env, _ = project
    together = json.loads((root / "reports" / "metrics.json").read_text())["test"]
    alone = root.parent / f"{root.name}-alone"
    shutil.copytree(root, alone)
    params = yaml.safe_load((alone / "params.yaml").read_text())
    params["train"].update(distribute="off", workers=None)
    (alone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    alone_env = project_env(alone)
    for stage in ("train", "evaluate"):
        run([sys.executable, "-m", "flows.dvc_stage", stage], alone, alone_env)
    single = json.loads((alone / "reports" / "metrics.json").read_text())["test"]
    # Not bit-identical: the two workers' global batches hold other rows (each worker's shard of row groups,
    # cut to the same number of full batches) than one process's. Within 0.03 of test accuracy.
    assert abs(together["accuracy"] - single["accuracy"]) <= 0.03, (together, single)


def worker_process(index: int) -> int | None:
    """The pid of local training worker `index` (its environment says which it is)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"flows.train_worker" in command and f"KERASFLOW_WORKER={index}".encode() in environment:
            return int(entry.name)
    return None


def test_a_worker_killed_mid_training_fails_the_stage_by_name_and_the_rerun_resumes(project):
    root, env, _ = project
    set_params(root, epochs=8, early_stopping={"enabled": False})
    shutil.rmtree(root / "models")
    log = root / "killed.log"
    with open(log, "w") as stream:
        stage = subprocess.Popen(
            [sys.executable, "-m", "flows.dvc_stage", "train"],
            cwd=root,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    chief_backup = wait_for_backup(root, stage, log, epochs=2)
    pid = worker_process(1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert stage.wait(timeout=120) == 1
    said = log.read_text()
    assert "stage train failed: training worker 1 of 2 was killed by SIGKILL" in said, said[-3000:]
    assert worker_process(0) is None and worker_process(1) is None  # the chief was stopped too
    assert not (root / "models").exists()  # nothing published
    killed_run = json.loads((chief_backup / "mlflow_run.json").read_text())["run_id"]
    client = use_store(root / "mlflow.db")
    assert client.get_run(killed_run).info.status == "FAILED"

    resumed = run([sys.executable, "-m", "flows.dvc_stage", "train"], root, env)
    done = int(re.search(r"the workers resume after epoch (\d+)", resumed.stderr).group(1))
    assert done >= 2 and f"resuming training after epoch {done}" in resumed.stderr
    assert f"epoch {done + 1}/8" in resumed.stderr and f"epoch {done}/8" not in resumed.stderr
    assert len(pd.read_csv(root / "reports" / "history.csv")) == 8
    assert (root / "models" / "model.keras").is_file()


def test_a_prefect_flow_run_trains_with_two_workers(project):
    root, env, _ = project
    # Another sample of the data than `dvc repro` left in data/: the workers must train on this run's split (in
    # the flow's cache), not on that older one, and the run's lineage must name this run's data.
    set_params(root, epochs=3, early_stopping={"enabled": False})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["max_rows"] = 1500
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run([str(BIN / "kerasflow"), "run"], root, env)
    assert "kerasflow: pipeline finished" in result.stdout
    assert "registered      kerasflow-digits-cnn version" in result.stdout
    assert "all 2 workers ended with the same weights" in result.stdout + result.stderr
    client = use_store(root / "mlflow.db")
    run_id = re.search(r"MLflow run\s+([0-9a-f]{32})", result.stdout).group(1)
    tags = client.get_run(run_id).data.tags
    assert tags["train.workers"] == "2"
    raw = max(root.glob(".kerasflow/cache/ingest-*/dataset.json"), key=lambda path: path.stat().st_mtime)
    assert (
        tags["data.md5"]
        == json.loads(raw.read_text())["md5"]
        != json.loads((root / "data/raw/dataset.json").read_text())["md5"]
    )
    assert tags["data.rows"].startswith("1,500 rows")


def test_two_workers_train_a_tabular_mlp(project):
    root, _, _ = project
    tabular = root.parent / f"{root.name}-tabular"
    shutil.copytree(root, tabular, ignore=shutil.ignore_patterns(".kerasflow", "mlflow.db", "mlartifacts"))
    params = yaml.safe_load((tabular / "params.yaml").read_text())
    params["ingest"] = {"source": "sklearn", "dataset": "breast_cancer"}
    params["preprocess"]["row_group_rows"] = 64  # 398 training rows: 7 row groups
    params["model"] = {
        "layers": [{"type": "dense", "units": 16, "activation": "relu"}],
        "loss": "binary_crossentropy",
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }
    params["train"].update(epochs=6, batch_size=32, early_stopping={"enabled": False})
    params["register"]["model_name"] = "breast-cancer-two-workers"
    (tabular / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tabular / "data" / "schema.json").unlink(missing_ok=True)
    env = project_env(tabular)
    output = ""
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate"):
        output += run([sys.executable, "-m", "flows.dvc_stage", stage], tabular, env).stderr
    assert "all 2 workers ended with the same weights" in output, output[-3000:]
    history = pd.read_csv(tabular / "reports" / "history.csv")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert json.loads((tabular / "reports" / "metrics.json").read_text())["test"]["accuracy"] > 0.9  # chance: 0.63
