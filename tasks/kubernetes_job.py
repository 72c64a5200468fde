"""train.launcher: kubernetes: the workers as an Indexed Job with a headless Service (deploy/kubernetes/).

The train stage (in a Prefect flow-run pod, or wherever `dvc repro` runs with a kubeconfig) renders the
manifest for this run (its worker count, its arguments, a name of its own), creates both objects, waits for
the Job, names the first failed worker with its last log lines, and deletes both in the end.

Written for a team that has the cluster: this repository's tests check the rendered objects against the
`kubernetes` client's models and the waiting logic against a stand-in API; no cluster has run it here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kerasflow.config import ConfigError
from tasks.cluster import LAST_LINES, WorkerFailed

logger = logging.getLogger(__name__)

MANIFEST = Path("deploy/kubernetes/train-workers.yaml")
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def render(manifest: str, workers: int, arguments: Sequence[str], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Service and Job of `manifest` for one training: `name` everywhere the manifest says kerasflow-train,
    `workers` pods at once, the run's arguments after the worker command's."""
    service, job = (document for document in yaml.safe_load_all(manifest) if document)
    if (service.get("kind"), job.get("kind")) != ("Service", "Job"):
        raise ValueError("the workers' manifest must hold a Service, then a Job")
    old = job["metadata"]["name"]
    for document in (service, job):
        document["metadata"]["name"] = name
        document["metadata"].setdefault("labels", {})["app.kubernetes.io/name"] = name
    service["spec"]["selector"] = {"app.kubernetes.io/name": name}
    spec = job["spec"]
    spec["completions"] = spec["parallelism"] = workers
    pod = spec["template"]
    pod["metadata"].setdefault("labels", {})["app.kubernetes.io/name"] = name
    pod["spec"]["subdomain"] = name
    (container,) = pod["spec"]["containers"]
    values = {"WORKERS": str(workers), "SERVICE": name, "JOB_NAME": name}
    for variable in container.get("env", []):
        if variable["name"] in values:
            variable["value"] = values[variable["name"]]
    container["args"] = [*container["args"], *arguments]
    logger.debug("rendered %s as %s for %d workers", old, name, workers)
    return service, job


def launch(
    workers: int,
    arguments: Sequence[str],
    namespace: str,
    manifest: Path,
    name: str,
    api: Any = None,
    poll_seconds: float = 5.0,
) -> None:
    """Create the workers' Service and Job in `namespace`, wait until every worker has succeeded, and delete
    both; a failed worker raises WorkerFailed naming its index and its last log lines. `api` is (CoreV1Api,
    BatchV1Api), by default from the pod's service account or the local kubeconfig."""
    core, batch = api or _clients()
    service, job = render(manifest.read_text(), workers, arguments, name)
    core.create_namespaced_service(namespace, service)
    try:
        batch.create_namespaced_job(namespace, job)
        logger.info("started Job %s/%s: %d training workers", namespace, name, workers)
        while True:
            status = batch.read_namespaced_job_status(name, namespace).status
            if (status.succeeded or 0) >= workers:
                return
            if status.failed:
                raise _failure(core, namespace, name, workers)
            time.sleep(poll_seconds)
    finally:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
        core.delete_namespaced_service(name, namespace)


def _failure(core: Any, namespace: str, name: str, workers: int) -> WorkerFailed:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    failed = [pod for pod in pods if pod.status.phase == "Failed"] or pods
    if not failed:
        return WorkerFailed(f"the training Job {namespace}/{name} failed before any worker pod started")
    pod = min(failed, key=lambda item: int((item.metadata.annotations or {}).get(INDEX_ANNOTATION, 0)))
    index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION, "?")
    try:
        said = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=LAST_LINES)
    except Exception as error:  # noqa: BLE001 (the failure matters more than its log)
        said = f"(its log could not be read: {error})"
    lines = "\n".join(f"    {line}" for line in str(said).splitlines() if line) or "    (nothing)"
    return WorkerFailed(
        f"training worker {index} of {workers} (pod {pod.metadata.name}) failed in Job {namespace}/{name}; "
        f"the other workers were stopped. Its last lines:\n{lines}"
    )


def _clients() -> tuple[Any, Any]:
    try:
        from kubernetes import client, config
    except ModuleNotFoundError:
        raise ConfigError(
            "train.launcher: kubernetes needs the Kubernetes client: pip install 'kerasflow[kubernetes]'"
        ) from None

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api(), client.BatchV1Api()
