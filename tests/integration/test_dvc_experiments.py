"""DVC experiments over the same stages: queued with `dvc exp run --queue -S`, run two at a time by
`dvc queue start -j 2`, listed by `dvc exp show`; they record into the project's MLflow store and never
move `champion`, which an experiment reaches only once applied to the workspace and registered there."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.conftest import use_store
from tests.integration.servers import clone_project, project_env, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL = "kerasflow-digits-cnn"
EXPERIMENTS = {"lr-003": 0.003, "lr-01": 0.01}


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """A git + DVC project whose two queued experiments ran, two at a time."""
    root = tmp_path_factory.mktemp("p")
    env = project_env(root)
    clone_project(root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    params["register"].update(thresholds={}, require_beat_baseline=False)  # every run would earn the crown
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "a short training"], root, env)

    for name, rate in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"model.optimizer.learning_rate={rate}"], root, env)
    run(["dvc", "queue", "start", "-j", "2"], root, env)
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if not any(word in status for word in ("Running", "Queued")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2, status + run(["dvc", "queue", "logs", "lr-01"], root, env).stdout[-3000:]
    return root, env


def test_queued_experiments_are_listed_by_dvc_exp_show_with_their_params_and_metrics(queued):
    root, env = queued
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                params = data["params"]["params.yaml"]["data"]
                metrics = data["metrics"]["reports/metrics.json"]["data"]
                found[revision["name"]] = (params["model"]["optimizer"]["learning_rate"], metrics["test"]["accuracy"])
    assert {name: rate for name, (rate, _) in found.items()} == EXPERIMENTS
    assert all(accuracy > 0.5 for _, accuracy in found.values())  # two epochs, far above chance (0.1)


def test_experiments_record_into_the_project_store_and_never_move_the_champion(queued):
    root, env = queued
    client = use_store(root / "mlflow.db")  # the project's store, not the experiments' copies under .dvc/tmp
    runs = {run.data.tags.get("dvc.experiment"): run for run in client.search_runs(["1"])}
    assert set(runs) == set(EXPERIMENTS)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 2 and {version.tags["kerasflow.decision"] for version in versions} == {"challenger"}
    assert {version.tags["kerasflow.check.not_a_dvc_experiment"] for version in versions} == {"failed"}
    assert MODEL not in [model.name for model in client.search_registered_models() if "champion" in model.aliases]

    # Thrown away: the registry is as it was.
    run(["dvc", "exp", "remove", "lr-01"], root, env)
    assert MODEL not in [model.name for model in client.search_registered_models() if "champion" in model.aliases]

    # Kept: applied to the workspace, then registered from it (the way the decision's reason gives).
    run(["dvc", "exp", "apply", "lr-003"], root, env)
    run(["dvc", "repro", "--force", "--single-item", "register"], root, env)
    registration = json.loads((root / "reports" / "registration.json").read_text())
    assert registration["alias"] == "champion"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == runs["lr-003"].info.run_id
