"""The tuning flow end to end on the bundled digits, under Prefect's test harness: a real Optuna study in sqlite,
trials as Prefect tasks on threads, nested MLflow runs, one registry version per study."""

from __future__ import annotations

import asyncio
import shutil

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, use_store

OPTIMIZERS = ["sgd", "adam", "rmsprop"]
# A small CNN for 3 epochs: the study is what is under test, not the model.
SMALL = {
    "model.layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 32, "activation": "relu"},
    ],
    "train.epochs": 3,
    "tune.epochs": 3,
    "register.thresholds": {},
    "register.require_beat_baseline": False,
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def prefect_records(flow_run_id: str):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    async def read():
        async with get_client() as client:
            flows = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            subflows = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
            )
            ids = [flow_run_id, *(str(run.id) for run in subflows)]
            task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            artifacts = await client.read_artifacts(flow_run_filter=flows)
            return subflows, task_runs, artifacts

    return asyncio.run(read())


def test_a_grid_of_three_optimizers_is_one_parent_three_trials_and_one_version(prefect_harness, project):
    from flows.tuning import tuning_pipeline

    overrides = {
        **SMALL,
        "tune.sampler": "grid",
        "tune.n_trials": 10,  # a grid runs its points, no more
        "tune.parallelism": 2,
        "tune.space": {"model.optimizer.name": {"choice": OPTIMIZERS}},
    }
    state = tuning_pipeline(params_path=str(project / "params.yaml"), overrides=overrides, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result.summary.counts == {"complete": 3, "pruned": 0, "failed": 0}

    client = use_store(project / "mlflow.db")
    parent = client.get_run(result.summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kerasflow.kind"] == "study"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = [run for run in children if run.data.tags["kerasflow.kind"] == "trial"]
    (best,) = [run for run in children if run.data.tags["kerasflow.kind"] == "best"]
    assert sorted(run.data.params["model.optimizer.name"] for run in trials) == sorted(OPTIMIZERS)
    for run in trials:  # each trial: full params, its curve per epoch, its state
        assert run.info.status == "FINISHED" and run.data.tags["trial.state"] == "complete"
        assert run.data.params["train.epochs"] == "3" and run.data.params["model.layers.0.type"] == "conv2d"
        losses = [point.value for point in client.get_metric_history(run.info.run_id, "epoch/val_loss")]
        assert len(losses) == 3 and run.data.metrics["val_loss"] == pytest.approx(min(losses))
    values = {run.data.params["model.optimizer.name"]: run.data.metrics["val_loss"] for run in trials}
    winner = min(values, key=values.get)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(values[winner])
    assert parent.data.tags["best.model.optimizer.name"] == winner
    assert best.data.params["model.optimizer.name"] == winner and best.info.status == "FINISHED"

    # The parent holds the comparison: the trials table and the charts.
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "charts")}
    assert {"charts/validation_curves.png", "charts/optimization_history.png"} <= artifacts
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "trials.csv", str(project)))
    assert sorted(table["model.optimizer.name"]) == sorted(OPTIMIZERS) and set(table["state"]) == {"complete"}

    # One registry version, from the best run, tagged with the study.
    (version,) = client.search_model_versions("name = 'kerasflow-digits-cnn'")
    assert version.run_id == best.info.run_id
    assert version.tags["kerasflow.study"] == result.summary.study
    assert version.tags["kerasflow.study_run"] == parent.info.run_id
    assert result.registration.alias == "champion"

    # Prefect: the data stages once, the trials as tasks of a subflow, the summary artifact.
    subflows, task_runs, artifacts = prefect_records(str(state.state_details.flow_run_id))
    names = sorted(run.name for run in task_runs)
    assert [run.name for run in subflows] and {flow.name for flow in subflows}
    assert names.count("ingest") == 1 and sorted(name for name in names if name.startswith("trial-")) == [
        "trial-0",
        "trial-1",
        "trial-2",
    ]
    summary = next(artifact for artifact in artifacts if artifact.key == "tuning-summary")
    assert result.summary.study in summary.data and winner in summary.data

    # The same study again: nothing left to run, the winner is registered already.
    again = tuning_pipeline(params_path=str(project / "params.yaml"), overrides=overrides)
    assert again.summary.counts == result.summary.counts and again.registration.reused
    assert len(client.search_model_versions("name = 'kerasflow-digits-cnn'")) == 1
    assert len(client.search_runs([parent.info.experiment_id], "tags.`kerasflow.kind` = 'study'")) == 1


def test_tpe_with_median_pruning_stops_trials_that_trail(prefect_harness, project):
    from flows.tuning import tuning_pipeline

    overrides = {
        **SMALL,
        "tune.epochs": 5,
        "tune.sampler": "tpe",
        "tune.pruner": "median",
        "tune.n_trials": 8,
        "tune.startup_trials": 2,
        "tune.warmup_epochs": 1,
        "model.optimizer.name": "sgd",
        # Built to prune: most of this range barely moves SGD in five epochs, and trails the trials that learn.
        "tune.space": {"model.optimizer.learning_rate": {"loguniform": [1.0e-7, 0.1]}},
    }
    result = tuning_pipeline(params_path=str(project / "params.yaml"), overrides=overrides)
    counts = result.summary.counts
    assert counts["pruned"] >= 1 and counts["complete"] >= 2 and sum(counts.values()) == 8

    client = use_store(project / "mlflow.db")
    children = client.search_runs(["1"], f"tags.mlflow.parentRunId = '{result.summary.parent_run_id}'")
    pruned = [run for run in children if run.data.tags.get("trial.state") == "pruned"]
    assert len(pruned) == counts["pruned"]
    for run in pruned:
        epochs = client.get_metric_history(run.info.run_id, "epoch/val_loss")
        assert run.info.status == "FINISHED" and 2 <= len(epochs) < 5  # stopped after warm-up, before the end
        assert "trails the median" in run.data.tags["mlflow.note.content"]
    complete = [run for run in children if run.data.tags.get("trial.state") == "complete"]
    best = min(run.data.metrics["val_loss"] for run in complete)
    assert result.summary.best.value == pytest.approx(best)
    assert all(run.data.metrics["epochs_trained"] < 5 for run in pruned)


def test_a_diverging_trial_is_recorded_as_failed_and_the_study_goes_on(prefect_harness, project):
    from flows.tuning import tuning_pipeline

    overrides = {
        **SMALL,
        "tune.sampler": "grid",
        "model.optimizer.name": "sgd",
        "tune.space": {"model.optimizer.learning_rate": {"choice": [0.05, 1.0e30]}},  # 1e30: NaN in the first epoch
    }
    result = tuning_pipeline(params_path=str(project / "params.yaml"), overrides=overrides)
    assert result.summary.counts == {"complete": 1, "pruned": 0, "failed": 1}
    assert result.summary.best.params == {"model.optimizer.learning_rate": 0.05}
    assert result.registration.version == "1"

    client = use_store(project / "mlflow.db")
    children = client.search_runs(["1"], f"tags.mlflow.parentRunId = '{result.summary.parent_run_id}'")
    (failed,) = [run for run in children if run.data.tags.get("trial.state") == "failed"]
    assert failed.info.status == "FAILED" and failed.data.params["model.optimizer.learning_rate"] == "1e+30"
    assert "NaN" in failed.data.tags["mlflow.note.content"]
