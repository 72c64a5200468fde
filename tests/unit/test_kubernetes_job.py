"""deploy/kubernetes/: the workers' Service and Indexed Job, as the train stage renders them, are valid objects of
the Kubernetes API (checked with the `kubernetes` client's models: no cluster runs here); the pod's script gives
each pod a TF_CONFIG kerasflow accepts; the stage waits for the Job and names a failed worker."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import client

from kerasflow.config import TrainParams
from tasks import cluster, kubernetes_job
from tests.conftest import REPO_ROOT

MANIFEST = REPO_ROOT / kubernetes_job.MANIFEST


def as_model(document: dict, kind: str):
    """The document read into the client's model, as the API server would read it (unknown fields refused)."""
    api = client.ApiClient()
    model = api._ApiClient__deserialize(document, kind)  # the client's own reader of API responses
    assert api.sanitize_for_serialization(model) == document, f"{kind} has fields the model does not know"
    return model


def test_the_rendered_objects_are_a_headless_service_and_an_indexed_job():
    service, job = kubernetes_job.render(MANIFEST.read_text(), 4, ["--run-id", "abc"], "kerasflow-train-x1")
    service_model, job_model = as_model(service, "V1Service"), as_model(job, "V1Job")
    assert service_model.spec.cluster_ip == "None"
    assert job_model.spec.completion_mode == "Indexed"
    assert job_model.spec.completions == job_model.spec.parallelism == 4
    pod = job_model.spec.template
    assert pod.spec.subdomain == service_model.metadata.name == job_model.metadata.name == "kerasflow-train-x1"
    assert service_model.spec.selector.items() <= pod.metadata.labels.items()
    (container,) = pod.spec.containers
    assert {port.container_port for port in container.ports} == {port.target_port for port in service_model.spec.ports}
    env = {variable.name: variable.value for variable in container.env}
    assert env["WORKERS"] == "4" and env["JOB_NAME"] == env["SERVICE"] == "kerasflow-train-x1"
    assert container.args[-2:] == ["--run-id", "abc"]
    for document in yaml.safe_load_all((REPO_ROOT / "deploy" / "kubernetes" / "rbac.yaml").read_text()):
        as_model(
            document,
            {"ServiceAccount": "V1ServiceAccount", "Role": "V1Role", "RoleBinding": "V1RoleBinding"}[document["kind"]],
        )


@pytest.mark.parametrize("index", [0, 2])
def test_each_pod_derives_a_tf_config_kerasflow_accepts(index):
    _, job = kubernetes_job.render(MANIFEST.read_text(), 3, [], "kerasflow-train-x1")
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("exec kerasflow train-worker", "printf '%s' \"$TF_CONFIG\" #")
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    printed = subprocess.run(
        ["/bin/sh", "-c", script, "worker"], env={**env, "JOB_COMPLETION_INDEX": str(index)},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = cluster.read_tf_config(printed)
    assert found.size == 3 and found.index == index and found.chief == (index == 0)
    assert found.workers[1] == "kerasflow-train-x1-1.kerasflow-train-x1:2222"
    assert json.loads(printed)["task"] == {"type": "worker", "index": index}


class StandIn:
    """The two API clients, answering as a cluster would for a Job whose worker 1 fails (or none)."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.calls, self.polls = fail, [], 0

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            if name == "read_namespaced_job_status":
                self.polls += 1
                done = self.polls >= 2
                return SimpleNamespace(
                    status=SimpleNamespace(
                        succeeded=2 if done and not self.fail else 0, failed=1 if done and self.fail else 0
                    )
                )
            if name == "list_namespaced_pod":
                pod = lambda index, phase: SimpleNamespace(  # noqa: E731
                    metadata=SimpleNamespace(
                        name=f"job-{index}", annotations={kubernetes_job.INDEX_ANNOTATION: str(index)}
                    ),
                    status=SimpleNamespace(phase=phase),
                )
                return SimpleNamespace(items=[pod(0, "Running"), pod(1, "Failed")])
            if name == "read_namespaced_pod_log":
                return "epoch 1/4 ...\nResourceExhausted: out of memory\n"
            return None

        return call


@pytest.mark.parametrize("fail", [False, True])
def test_the_stage_waits_for_the_job_names_a_failed_worker_and_cleans_up(fail):
    stand_in = StandIn(fail)

    def launch() -> None:
        kubernetes_job.launch(2, [], "ml", MANIFEST, "kerasflow-train-x1", api=(stand_in, stand_in), poll_seconds=0)

    if fail:
        with pytest.raises(
            cluster.WorkerFailed, match=r"training worker 1 of 2 \(pod job-1\) failed in Job ml/kerasflow-train-x1"
        ) as raised:
            launch()
        assert "ResourceExhausted: out of memory" in str(raised.value)
    else:
        launch()
    assert stand_in.calls[:2] == ["create_namespaced_service", "create_namespaced_job"]
    assert stand_in.calls[-2:] == ["delete_namespaced_job", "delete_namespaced_service"]


def test_kubernetes_needs_a_worker_count():
    with pytest.raises(ValueError, match="launcher: kubernetes starts `workers` pods"):
        TrainParams(distribute="multi_worker", launcher="kubernetes")


def test_the_kubernetes_deployment_names_a_flow_and_params_that_load():
    from kerasflow.config import load_params

    (deployment,) = yaml.safe_load((REPO_ROOT / "deploy" / "kubernetes" / "prefect.yaml").read_text())["deployments"]
    module, _, flow = deployment["entrypoint"].partition(":")
    assert f"def {flow}(" in (REPO_ROOT / module).read_text()
    params = load_params(REPO_ROOT / "params.yaml", deployment["parameters"]["overrides"])
    assert (params.train.distribute, params.train.launcher, params.train.workers) == ("multi_worker", "kubernetes", 4)
    assert deployment["work_pool"]["job_variables"]["service_account_name"] == "kerasflow-trainer"
