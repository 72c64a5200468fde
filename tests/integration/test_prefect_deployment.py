"""Deployment runs for real: a Prefect server, a process work pool, `prefect deploy`, a worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import use_store
from tests.integration.servers import BIN, background, clone_project, digits_file, free_port, wait_healthy

pytestmark = pytest.mark.integration

DEPLOYMENT = "training-pipeline/digits-cnn"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A project with its Prefect server, work pool, deployment and worker; all stopped afterwards."""
    root = tmp_path_factory.mktemp("deployed")
    project = clone_project(root / "project")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(project),
        "PWD": str(project),
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # kerasflow serve picks up runs sooner
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    # clone_project makes it a git checkout, as a deployed project is: runs record its commit.
    server_command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server_command, root / "server.log", env) as server:
        wait_healthy(f"http://127.0.0.1:{port}/api/health", server, root / "server.log")
        prefect = [str(BIN / "prefect"), "--no-prompt"]
        for command in (["work-pool", "create", "kerasflow-process", "--type", "process"], ["deploy", "--all"]):
            subprocess.run([*prefect, *command], cwd=project, env=env, check=True, capture_output=True, timeout=120)
        worker_command = [*prefect, "worker", "start", "--pool", "kerasflow-process"]
        with background(worker_command, root / "worker.log", env, cwd=project):
            yield project, env, root


def trigger(deployment, *params: str, name: str = DEPLOYMENT) -> str:
    project, env, _ = deployment
    arguments = [item for param in params for item in ("--param", param)]
    result = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deployment", "run", name, *arguments],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return re.search(r"UUID: ([0-9a-f-]{36})", result.stdout).group(1)


def wait_for(deployment, *flow_run_ids: str, timeout: float = 420) -> dict[str, object]:
    """Poll the server until every flow run is final; return their states."""
    _, env, root = deployment
    script = (
        "import asyncio, json, sys, time\n"
        "from prefect import get_client\n"
        "async def main(ids, timeout):\n"
        "    deadline = time.monotonic() + timeout\n"
        "    async with get_client() as client:\n"
        "        while True:\n"
        "            runs = [await client.read_flow_run(i) for i in ids]\n"
        "            if all(r.state.is_final() for r in runs) or time.monotonic() > deadline:\n"
        "                return {str(r.id): {'type': r.state.type.value, 'message': r.state.message} for r in runs}\n"
        "            await asyncio.sleep(2)\n"
        "print(json.dumps(asyncio.run(main(sys.argv[2:], float(sys.argv[1])))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(timeout), *flow_run_ids],
        env=env, capture_output=True, text=True, timeout=timeout + 60, check=True,
    )  # fmt: skip
    states = json.loads(result.stdout.strip().splitlines()[-1])
    for flow_run_id, state in states.items():
        if state["type"] not in ("COMPLETED", "FAILED", "CRASHED"):
            worker_log = (root / "worker.log").read_text()[-4000:]
            raise TimeoutError(f"flow run {flow_run_id} still {state['type']} after {timeout}s:\n{worker_log}")
    return states


def mlflow_run_of(project: Path, flow_run_id: str):
    client = use_store(project / "mlflow.db")
    experiment = client.get_experiment_by_name("kerasflow")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    return client, run


def test_deployment_run_with_an_override(deployment):
    project, _, _ = deployment
    started = time.monotonic()
    flow_run_id = trigger(deployment, "epochs=2")
    states = wait_for(deployment, flow_run_id)
    assert states[flow_run_id]["type"] == "COMPLETED", states
    _, run = mlflow_run_of(project, flow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.metrics["epochs_trained"] == 2
    assert (project / "runs" / flow_run_id / "reports" / "registration.json").is_file()
    assert time.monotonic() - started < 420


def test_two_runs_at_once_keep_their_outputs_apart(deployment):
    project, _, _ = deployment
    first = trigger(deployment, "epochs=2")
    second = trigger(deployment, 'overrides={"train": {"epochs": 3, "batch_size": 64}}')
    states = wait_for(deployment, first, second)
    assert {state["type"] for state in states.values()} == {"COMPLETED"}, states
    reports = {}
    for flow_run_id, epochs in ((first, "2"), (second, "3")):
        client, run = mlflow_run_of(project, flow_run_id)
        assert run.data.params["train.epochs"] == epochs
        folder = project / "runs" / flow_run_id
        registration = json.loads((folder / "reports" / "registration.json").read_text())
        assert registration["run_id"] == run.info.run_id and (folder / "models" / "model.keras").is_file()
        reports[flow_run_id] = registration
    assert reports[first]["version"] != reports[second]["version"]
    assert (
        json.loads((project / "runs" / second / "reports" / "mlflow_run.json").read_text())["run_id"]
        != (json.loads((project / "runs" / first / "reports" / "mlflow_run.json").read_text())["run_id"])
    )


def test_a_bad_override_fails_the_deployment_run_naming_the_key(deployment):
    project, _, _ = deployment
    flow_run_id = trigger(deployment, 'overrides={"train": {"epohcs": 2}}')
    state = wait_for(deployment, flow_run_id)[flow_run_id]
    assert state["type"] == "FAILED" and "train.epohcs: unknown key" in state["message"]
    assert not (project / "runs" / flow_run_id).exists()


def test_kerasflow_serve_runs_the_flow_without_a_work_pool(deployment):
    project, env, root = deployment
    with background([str(BIN / "kerasflow"), "serve", "--name", "served"], root / "serve.log", env, cwd=project):
        deadline = time.monotonic() + 120
        while True:
            listed = subprocess.run(
                [str(BIN / "prefect"), "deployment", "ls"], env=env, capture_output=True, text=True, timeout=60
            )
            if "served" in listed.stdout:
                break
            assert time.monotonic() < deadline, (root / "serve.log").read_text()[-3000:]
            time.sleep(2)
        flow_run_id = trigger(deployment, "epochs=1", name="training-pipeline/served")
        state = wait_for(deployment, flow_run_id)[flow_run_id]
    assert state["type"] == "COMPLETED", (root / "serve.log").read_text()[-3000:]
    _, run = mlflow_run_of(project, flow_run_id)
    assert run.data.params["train.epochs"] == "1"
    assert (project / "runs" / flow_run_id / "reports" / "metrics.json").is_file()  # served runs are isolated too


READ_BACK = """
import asyncio, json, sys
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId
async def main(flow_run_id):
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        runs = {}
        for task_run in task_runs:
            logs = await client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run.id])))
            upstream = [str(item.id) for item in task_run.task_inputs.get("wait_for", [])]
            runs[task_run.name] = {"id": str(task_run.id), "wait_for": upstream, "logs": [log.message for log in logs]}
        artifacts = await client.read_artifacts()
        summary = [a.data for a in artifacts if a.key == "training-summary" and str(a.flow_run_id) == flow_run_id]
        summary = summary[0] if summary else ""
        return {"name": flow_run.name, "tags": flow_run.tags, "task_runs": runs, "summary": summary}
print(json.dumps(asyncio.run(main(sys.argv[1]))))
"""


def test_a_deployment_run_reads_well_in_mlflow_and_prefect(deployment):
    """What a reviewer sees, read back through the MLflow and Prefect APIs after a real deployment run."""
    from kerasflow.io import file_md5

    project, env, _ = deployment
    flow_run_id = trigger(deployment, "epochs=3")
    assert wait_for(deployment, flow_run_id)[flow_run_id]["type"] == "COMPLETED"
    client, run = mlflow_run_of(project, flow_run_id)
    prefect = json.loads(
        subprocess.run(
            [sys.executable, "-c", READ_BACK, flow_run_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    # The experiment is a model-training one; the run is named after the flow run and carries MLflow's own tags.
    tags = run.data.tags
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == prefect["name"] == tags["prefect.flow_run_name"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.user"] and "training_pipeline" in tags["mlflow.source.name"]
    note = tags["mlflow.note.content"]
    assert prefect["name"] in note and tags["data.md5"] in note and run.data.tags["registry.alias"] in note

    # The splits are the run's dataset inputs, each with the md5 DVC records for its file as digest.
    (processed,) = project.glob(".kerasflow/cache/preprocess-*")
    digests = {item.dataset.name: item.dataset.digest for item in run.inputs.dataset_inputs}
    assert digests == {name: file_md5(processed / f"{name}.parquet") for name in ("train", "val", "test")}

    # Per-epoch learning rate and seconds, system metrics, no empty params, the params file.
    assert [point.step for point in client.get_metric_history(run.info.run_id, "epoch/learning_rate")] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "epoch/seconds")) == 3
    assert any(name.startswith("system/") for name in run.data.metrics)
    assert "" not in run.data.params.values() and "model.decision_threshold" not in run.data.params  # ten classes
    assert "params.yaml" in {item.path for item in client.list_artifacts(run.info.run_id)}

    # The logged model is named after the workload and carries final values, never an epoch's.
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    linked = {metric.key: metric.value for metric in model.metrics}
    assert model.name == "kerasflow-digits-cnn"
    assert linked["test_accuracy"] == run.data.metrics["test_accuracy"] and "best_epoch" in linked
    assert not [key for key in linked if key.startswith("epoch/")]
    version = client.get_model_version("kerasflow-digits-cnn", tags["registry.version"])
    assert "Decision" in version.description and tags["registry.alias"] in version.description
    assert client.get_registered_model("kerasflow-digits-cnn").description

    # Prefect: the stages as a chain, plain task names, each task's own lines in its logs, one per epoch in train's.
    task_runs = prefect["task_runs"]
    chain = ["open-mlflow-run", "ingest", "validate", "preprocess", "train", "evaluate", "register"]
    assert sorted(task_runs) == sorted(chain)
    for before, after in zip(chain, chain[1:], strict=False):
        assert task_runs[after]["wait_for"] == [task_runs[before]["id"]], after
    epochs = [line.split()[1] for line in task_runs["train"]["logs"] if line.startswith("epoch ")]
    assert epochs == ["1/3", "2/3", "3/3"]
    # (ingest's output is cached from the module's earlier runs; validate always runs)
    assert any("1797 rows x 65 columns passed validation" in line for line in task_runs["validate"]["logs"])
    assert {"model:kerasflow-digits-cnn", "workload:sklearn:digits"} <= set(prefect["tags"])
    summary = prefect["summary"]
    assert "mlflow ui --backend-store-uri" in summary and run.info.run_id in summary and head[:10] in summary
    assert "`epochs=3`" in summary and "best epoch" in summary


@pytest.mark.slow
def test_the_tune_deployment_runs_a_study_on_the_worker(deployment):
    project, _, _ = deployment
    study = {
        "tune": {
            "sampler": "grid",
            "epochs": 2,
            "space": {"model.optimizer.name": {"choice": ["sgd", "adam"]}},
        },
        "train": {"epochs": 2},
    }
    flow_run_id = trigger(deployment, f"overrides={json.dumps(study)}", name="tuning-pipeline/tune")
    states = wait_for(deployment, flow_run_id)
    assert states[flow_run_id]["type"] == "COMPLETED", states
    client = use_store(project / "mlflow.db")
    experiment = client.get_experiment_by_name("kerasflow")
    (parent,) = client.search_runs(
        [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`kerasflow.kind` = 'study'"
    )
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = [run for run in children if run.data.tags["kerasflow.kind"] == "trial"]
    assert sorted(run.data.params["model.optimizer.name"] for run in trials) == ["adam", "sgd"]
    versions = client.search_model_versions("name = 'kerasflow-digits-cnn'")
    assert [v for v in versions if v.tags.get("kerasflow.study") == parent.data.tags["optuna.study"]]


MODEL = "kerasflow-digits-cnn"
RETRAIN = "training-pipeline/retrain-on-drift"

SEND_EVENT = """
import json, sys
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
resource, payload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
emit_event(event="kerasflow.drift.detected", resource=resource, payload=payload)
EventsWorker.drain_all(timeout=30)
"""


def api(deployment, method: str, path: str, body: dict | None = None):
    import httpx

    _, env, _ = deployment
    response = httpx.request(method, f"{env['PREFECT_API_URL']}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def kerasflow_events(deployment, name: str) -> list[dict]:
    body = {"filter": {"event": {"name": [name]}, "order": "ASC"}, "limit": 50}
    return api(deployment, "POST", "/events/filter", body)["events"]


def retraining_runs(deployment) -> list[dict]:
    deployment_id = api(deployment, "GET", f"/deployments/name/{RETRAIN}")["id"]
    return api(deployment, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})


def until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"after {timeout:.0f}s: {what}"
        time.sleep(1)
    return found


def parsed_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
def test_drift_starts_one_retraining_through_prefect_events_and_the_gate_decides(deployment):
    project, env, root = deployment
    client = use_store(project / "mlflow.db")
    if "champion" not in (client.get_registered_model(MODEL).aliases if client.search_registered_models() else {}):
        assert wait_for(deployment, first := trigger(deployment, "epochs=5"))[first]["type"] == "COMPLETED"
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)

    # Decoys first: drift about another model, and one about this model that kerasflow did not send (no
    # predictions run named). Neither may start a retraining.
    decoys = [
        ({"prefect.resource.id": "kerasflow.model.someone-elses-model", "kerasflow.prediction-run": "r0"}, {}),
        ({"prefect.resource.id": f"kerasflow.model.{MODEL}"}, {"garbage": True}),
    ]
    for resource, payload in decoys:
        subprocess.run(
            [sys.executable, "-c", SEND_EVENT, json.dumps(resource), json.dumps(payload)],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    until(lambda: len(kerasflow_events(deployment, "kerasflow.drift.detected")) >= 2, 60, "the decoys in the feed")

    # Drifted data scored by the score-new-data deployment: the drift is in the event feed, about this model.
    shifted = digits_file(project / "brighter.csv", shift=6.0)
    scoring = trigger(deployment, f"input_path={shifted.name}", name="batch-prediction/score-new-data")
    assert wait_for(deployment, scoring)[scoring]["type"] == "COMPLETED"
    predictions = client.get_experiment_by_name("kerasflow-predictions")
    (prediction_run,) = client.search_runs([predictions.experiment_id], max_results=1, order_by=["start_time DESC"])
    drift = until(
        lambda: [
            e
            for e in kerasflow_events(deployment, "kerasflow.drift.detected")
            if e["resource"].get("kerasflow.prediction-run") == prediction_run.info.run_id
        ],
        60,
        "the drift event in the feed",
    )[0]
    assert drift["resource"]["prefect.resource.id"] == f"kerasflow.model.{MODEL}"
    assert "pixel_mean" in drift["payload"]["drifted"] and drift["payload"]["scored_file"].endswith("brighter.csv")
    assert f"prefect.flow-run.{scoring}" in {related["prefect.resource.id"] for related in drift["related"]}

    # The automation starts one retraining, for this event (not for a decoy).
    (retraining,) = until(lambda: retraining_runs(deployment), 120, "a retraining flow run")
    scheduled_after = parsed_time(retraining["created"]) - parsed_time(drift["occurred"])
    assert retraining["parameters"]["trigger"]["event_id"] == drift["id"]

    # While it trains: a second drifted file (within the cooldown) and an undrifted one.
    for name, shift in (("brighter-again.csv", 6.0), ("as-trained.csv", 0.0)):
        path = digits_file(project / name, shift=shift)
        scored = subprocess.run(
            [str(BIN / "kerasflow"), "predict", "--input", str(path)],
            cwd=project, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert scored.returncode == 0, scored.stderr[-3000:]

    def both_scorings() -> dict[str, bool] | None:
        found = kerasflow_events(deployment, "kerasflow.prediction.completed")
        drifted = {Path(e["payload"]["scored_file"]).name: e["payload"]["drift_found"] for e in found}
        return drifted if {"brighter-again.csv", "as-trained.csv"} <= set(drifted) else None

    completed = until(both_scorings, 60, "both scorings in the feed")
    assert completed["brighter-again.csv"] is True and completed["as-trained.csv"] is False

    state = wait_for(deployment, retraining["id"], timeout=600)[retraining["id"]]
    assert state["type"] == "COMPLETED", state
    finished = api(deployment, "GET", f"/flow_runs/{retraining['id']}")
    # One retraining for the whole burst: the second drift event fell in the cooldown.
    assert len(kerasflow_events(deployment, "kerasflow.drift.detected")) == 4  # two decoys, two drifted files
    time.sleep(5)
    assert [run["id"] for run in retraining_runs(deployment)] == [retraining["id"]]

    # The record says why: the MLflow run, the registry version and the Prefect summary.
    _, run = mlflow_run_of(project, retraining["id"])
    tags = run.data.tags
    assert tags["kerasflow.trigger"] == "drift" and tags["kerasflow.trigger.event_id"] == drift["id"]
    assert tags["kerasflow.trigger.prediction_run_id"] == prediction_run.info.run_id
    assert "retrained because column `pixel_mean`" in tags["mlflow.note.content"]
    version = client.get_model_version(MODEL, tags["registry.version"])
    assert version.tags["kerasflow.trigger.prediction_run_id"] == prediction_run.info.run_id
    assert "**Why it was trained:** retrained because column `pixel_mean`" in version.description

    # The gate decided, and said so in an event.
    registration = json.loads((project / "runs" / retraining["id"] / "reports" / "registration.json").read_text())
    expected = "kerasflow.champion.changed" if registration["promote"] else "kerasflow.registration.rejected"
    said = until(
        lambda: [
            e
            for e in kerasflow_events(deployment, expected)
            if f"kerasflow.model.{MODEL}.version.{registration['version']}"
            in {related["prefect.resource.id"] for related in e["related"]}
        ],
        60,
        f"{expected} for the retrained version",
    )[0]
    if registration["promote"]:
        assert said["payload"]["previous_version"] == champion
        assert said["payload"]["new_version"] == str(version.version)
    else:
        assert said["payload"]["failed_checks"] and said["payload"]["champion"] == champion
    latency = {
        "event_to_flow_run_created_s": round(scheduled_after, 1),
        "event_to_flow_run_completed_s": round(parsed_time(finished["end_time"]) - parsed_time(drift["occurred"]), 1),
        "gate": registration["alias"],
    }
    (root / "retraining-latency.json").write_text(json.dumps(latency))
    print("retraining latency:", latency)
