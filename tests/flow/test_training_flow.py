"""The Prefect flow end to end on the bundled digits, under Prefect's test harness."""

from __future__ import annotations

import asyncio
import json
import shutil

import pandas as pd
import pytest

from flows.stages import build_stages
from kerasflow.layout import Layout
from tests.conftest import REPO_ROOT, use_store


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with the shipped params.yaml; its own mlflow.db."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_default_pipeline_registers_a_champion_digits_cnn(prefect_harness, project, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.training import training_pipeline

    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    state = training_pipeline(params_path=str(project / "params.yaml"), return_state=True)
    assert state.is_completed(), state
    result = state.result()

    assert result.metrics["accuracy"] >= 0.97
    assert result.metrics["accuracy"] > result.baseline["accuracy"]
    # The committed reports are what the shipped params give (the README's first command): on this machine to the
    # last digit; within two test rows where another CPU's kernels may round otherwise.
    committed = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    assert abs(result.metrics["accuracy"] - committed["test"]["accuracy"]) <= 2 / committed["test_rows"] + 1e-9
    registration = result.registration
    assert registration.alias == "champion" and registration.decision.promote

    client = use_store(project / "mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "40" and run.data.params["model.layers.0.type"] == "conv2d"
    assert run.data.tags["kerasflow.entry"] == "prefect"
    (raw_meta,) = project.glob(".kerasflow/cache/ingest-*/dataset.json")  # data stages write to the content cache
    assert run.data.tags["data.md5"] == json.loads(raw_meta.read_text())["md5"]
    epochs = int(run.data.metrics["epochs_trained"])
    losses = [point.value for point in client.get_metric_history(run.info.run_id, "epoch/train_loss")]
    assert len(losses) == epochs and losses[-1] < losses[0]
    # Epochs count from 1 where users read them (the log's "epoch 3/40"): history.csv and best_epoch.
    history = pd.read_csv(project / "reports" / "history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    best = json.loads((project / "reports" / "metrics.json").read_text())["best_epoch"]
    assert best == int(history.loc[history["val_loss"].idxmin(), "epoch"]) and 1 <= best <= epochs
    assert str(client.get_model_version_by_alias("kerasflow-digits-cnn", "champion").version) == registration.version

    # The Prefect side: one task run per stage, in dvc.yaml's order, and the summary artifact.
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    assert flow_run_id == str(state.state_details.flow_run_id)

    async def prefect_records():
        async with get_client() as prefect:
            flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            task_runs = await prefect.read_task_runs(
                flow_run_filter=flow_filter, sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50
            )
            return task_runs, await prefect.read_latest_artifacts(limit=50)

    task_runs, artifacts = asyncio.run(prefect_records())
    ran = [task_run.name for task_run in sorted(task_runs, key=lambda t: t.start_time)]
    assert ran == ["open-mlflow-run", *(stage.name for stage in build_stages(Layout(project)))]  # plain names
    summary = next(artifact for artifact in artifacts if artifact.key == "training-summary")
    recorded = [*run.data.params.values(), *run.data.tags.values(), summary.data]
    assert not any(secret in str(value) for value in recorded)  # environment secrets are never logged
    assert result.run_id in summary.data and "champion" in summary.data

    # `kerasflow accept-schema` after a flow run: data/raw/ is empty, the raw dataset is in the flow's cache.
    from flows import cli

    assert not (project / "data" / "raw").exists()
    (project / "data" / "schema.json").unlink()
    assert cli.main(["accept-schema", "--params", str(project / "params.yaml")]) == 0
    assert json.loads((project / "data" / "schema.json").read_text())["source"] == "sklearn:digits"


def test_bad_override_fails_the_flow_before_any_stage(prefect_harness, project):
    from flows.training import training_pipeline

    state = training_pipeline(
        params_path=str(project / "params.yaml"), overrides={"train.epochs": -3}, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Exception, match=r"train\.epochs"):
        state.result()
    assert not (project / "data").exists() and not (project / "mlflow.db").exists()


def test_a_stage_that_fails_for_good_fails_the_flow_and_the_mlflow_run(prefect_harness, project):
    from flows.training import training_pipeline

    missing = project / "nowhere" / "houses.csv"
    state = training_pipeline(
        params_path=str(project / "params.yaml"),
        overrides={"ingest": {"source": "file", "path": str(missing)}},
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="houses.csv: file not found"):
        state.result()
    client = use_store(project / "mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert not (project / "reports").exists()


def test_a_second_run_in_the_same_folder_is_refused_by_name_and_an_isolated_one_is_not(tmp_path):
    from kerasflow.errors import is_expected
    from kerasflow.layout import RunFolderBusy, run_folder_lock

    with run_folder_lock(tmp_path):
        with pytest.raises(
            RunFolderBusy,
            match=r"another run .* is writing its models/ and reports/ here; wait",
        ):
            with run_folder_lock(tmp_path):
                pass
        with run_folder_lock(tmp_path / "runs" / "flow-run-2"):  # --isolate: a folder of its own
            pass
    with run_folder_lock(tmp_path):  # released when the first run ends
        pass
    assert is_expected(RunFolderBusy("x"))


def test_only_transient_errors_are_retried():
    from flows.training import is_transient
    from tasks.ingest import DataSourceError

    assert is_transient(ConnectionError("refused")) and is_transient(DataSourceError("offline", transient=True))
    assert not is_transient(DataSourceError("x.csv: file not found")) and not is_transient(ValueError("bad"))
