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
from tests.integration.servers import BIN, background, copy_project, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CODE = ["kerasflow", "tasks", "flows", "params.yaml", "prefect.yaml"]
DEPLOYMENT = "training-pipeline/digits-cnn"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A project with its Prefect server, work pool, deployment and worker; all stopped afterwards."""
    root = tmp_path_factory.mktemp("deployed")
    project = copy_project(CODE, root / "project")
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
