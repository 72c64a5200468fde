"""`kerasflow tune` as users run it, against a real Prefect server: a study killed mid-trial continues where it
stopped, and trials run on a Dask cluster (a local scheduler and two workers the test starts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import REPO_ROOT, use_store
from tests.integration.servers import BIN, background, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

OPTIMIZERS = ["sgd", "adam", "rmsprop", "adagrad"]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One Prefect server for the module, so each `kerasflow tune` process skips starting a temporary one."""
    root = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(command, root / "server.log", env) as server:
        wait_healthy(f"http://127.0.0.1:{port}/api/health", server, root / "server.log")
        yield env


def project(folder: Path, **changes) -> Path:
    """The shipped params with a small CNN, three-epoch trials, no gate to pass, and `changes`."""
    tree = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    tree["model"]["layers"] = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 32, "activation": "relu"},
    ]
    tree["train"]["epochs"] = 2
    tree["register"].update(thresholds={}, require_beat_baseline=False)
    tree["tune"].update(sampler="grid", n_trials=4, epochs=3, space={"model.optimizer.name": {"choice": OPTIMIZERS}})
    tree["tune"].update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return folder


def environment(prefect_env: dict[str, str]) -> dict[str, str]:
    env = {**prefect_env, "PYTHONPATH": str(REPO_ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def tune(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "kerasflow"), "tune", "--json"], cwd=folder, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def study_of(folder: Path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{folder / 'optuna.db'}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{folder / 'optuna.db'}")


def test_a_study_killed_mid_trial_continues_without_repeating_finished_trials(prefect_server, tmp_path):
    folder = project(tmp_path / "p", epochs=8)
    env = environment(prefect_server)
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(
            [str(BIN / "kerasflow"), "tune"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 600
    while "trial 2: epoch 2/8" not in (tmp_path / "killed.log").read_text():  # two trials done, a third under way
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    before = {trial.number: trial for trial in study_of(folder).get_trials()}
    assert [before[number].state.name for number in sorted(before)] == ["COMPLETE", "COMPLETE", "RUNNING"]

    result = json.loads(tune(folder, env).stdout)
    trials = study_of(folder).get_trials()
    finished = [trial for trial in trials if trial.state.name == "COMPLETE"]
    # Every optimizer ran to completion once; the two finished before the kill were not run again.
    assert sorted(trial.params["model.optimizer.name"] for trial in finished) == sorted(OPTIMIZERS)
    for number in (0, 1):
        assert (
            trials[number].state.name == "COMPLETE"
            and trials[number].datetime_complete == before[number].datetime_complete
        )
    interrupted = trials[2]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["interrupted"]
    (retry,) = [trial for trial in trials if trial.user_attrs.get("retry_of") == 2]
    assert retry.params == interrupted.params and retry.state.name == "COMPLETE"
    assert result["counts"] == {"complete": 4, "pruned": 0, "failed": 0}

    # MLflow: the same parent run, continued; the interrupted trial's run closed as killed, not left RUNNING.
    client = use_store(folder / "mlflow.db")
    (parent,) = client.search_runs(["1"], "tags.`kerasflow.kind` = 'study'")
    assert parent.info.run_id == result["parent_run_id"] and parent.info.status == "FINISHED"
    children = client.search_runs(["1"], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    states = sorted(run.data.tags.get("trial.state", "best") for run in children)
    assert states == ["best", "complete", "complete", "complete", "complete", "interrupted"]
    assert not [run for run in children if run.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def dask_cluster(prefect_server, tmp_path_factory):
    """A Dask scheduler and two single-threaded workers on loopback, started as a user would."""
    root = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = environment(prefect_server)
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    with background(scheduler, root / "scheduler.log", env):
        workers = []
        with background(worker_command(address, "w1"), root / "w1.log", env, cwd=REPO_ROOT) as first:
            with background(worker_command(address, "w2"), root / "w2.log", env, cwd=REPO_ROOT) as second:
                workers = [first, second]
                wait_for_workers(address, 2)
                yield address, {process.pid for process in workers}


def worker_command(address: str, name: str) -> list[str]:
    # No nanny: the worker is the process the test started, so its pid is the one trials record.
    return [str(BIN / "dask"), "worker", address, "--name", name, "--nthreads", "1", "--no-nanny", "--no-dashboard"]


def wait_for_workers(address: str, count: int, timeout: float = 120) -> None:
    script = (
        f"from distributed import Client; c = Client({address!r}, timeout=60); "
        f"c.wait_for_workers({count}, timeout={timeout})"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=timeout + 60, capture_output=True)


def test_trials_run_on_a_dask_cluster(prefect_server, dask_cluster, tmp_path):
    address, worker_pids = dask_cluster
    folder = project(tmp_path / "p", task_runner="dask", dask_address=address, parallelism=2)
    result = json.loads(tune(folder, environment(prefect_server)).stdout)
    assert result["counts"] == {"complete": 4, "pruned": 0, "failed": 0}

    client = use_store(folder / "mlflow.db")
    trials = client.search_runs(["1"], "tags.`kerasflow.kind` = 'trial'")
    hosts = {run.data.tags["trial.host"] for run in trials}
    assert {int(host.rsplit(" ", 1)[1]) for host in hosts} == worker_pids  # both workers ran trials, nothing else did
    for run in trials:
        assert len(client.get_metric_history(run.info.run_id, "epoch/val_loss")) == 3
    (version,) = client.search_model_versions("name = 'kerasflow-digits-cnn'")
    assert version.tags["kerasflow.study"] == result["study"]


def test_a_small_data_trial_is_scored_by_cross_validation(prefect_server, tmp_path):
    """tune.folds: each trial fits every fold of the training and validation rows; its value is their mean."""
    folder = project(
        tmp_path / "folds", n_trials=2, epochs=2, folds=3, space={"model.optimizer.name": {"choice": OPTIMIZERS[1:3]}}
    )
    tune(folder, environment(prefect_server))
    trials = study_of(folder).trials
    assert len(trials) == 2 and all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    for trial in trials:
        folds = trial.user_attrs["fold_values"]
        assert len(folds) == 3 and len(set(folds)) == 3  # three different models, on three different folds
        assert trial.value == pytest.approx(sum(folds) / 3)
    # The temporary fold files are gone with the trial.
    assert not list(Path(tempfile.gettempdir()).glob("kerasflow-folds-*"))
