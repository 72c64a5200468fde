"""`dvc repro` for real, in a temporary git repository: stages, no-ops, partial reruns, MLflow, registry."""

from __future__ import annotations

import json
import subprocess

import mlflow
import numpy as np
import pytest
import yaml

from tests.conftest import use_store
from tests.integration.servers import clone_project, project_env, run

pytestmark = pytest.mark.integration

STAGES = ["ingest", "validate", "preprocess", "train", "evaluate", "register"]


def stages_run(result: subprocess.CompletedProcess) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC repository holding a copy of the project, and the environment to run dvc in."""
    root = tmp_path_factory.mktemp("project")
    env = project_env(root)
    clone_project(root, env, remote=tmp_path_factory.mktemp("remote"))
    return root, env


# The heaviest test of the quick half (six stages, then a changed param, then a worse model): in CI's slow half.
@pytest.mark.slow
def test_dvc_repro_end_to_end(repo):
    root, env = repo

    # 1. Every stage runs, in order, and writes its outputs.
    first = run(["dvc", "repro"], root, env)
    assert stages_run(first) == STAGES, first.stdout
    for path in [
        "data/raw/dataset.parquet",
        "data/schema.json",
        "data/processed/train.parquet",
        "models/model.keras",
        "reports/metrics.json",
        "reports/registration.json",
        "reports/history.csv",
        "reports/plots/predictions.csv",
    ]:
        assert (root / path).is_file(), path
    registration = json.loads((root / "reports/registration.json").read_text())
    assert registration["alias"] == "champion"
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.97

    # 2. Nothing changed: nothing runs.
    second = run(["dvc", "repro"], root, env)
    assert stages_run(second) == [] and "Data and pipelines are up to date" in second.stdout

    # 3. The one MLflow run of the pipeline holds params, epochs, final metrics, plots, lineage and a loadable model.
    client = use_store(root / "mlflow.db")
    run_id = json.loads((root / "reports/mlflow_run.json").read_text())["run_id"]
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED"
    assert record.data.params["train.epochs"] == "40" and record.data.params["seed"] == "42"
    epochs = int(record.data.metrics["epochs_trained"])
    assert [point.step for point in client.get_metric_history(run_id, "epoch/val_loss")] == list(range(epochs))
    assert record.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    raw_md5 = next(out["md5"] for out in lock["stages"]["ingest"]["outs"] if out["path"] == "data/raw/dataset.parquet")
    assert record.data.tags["data.md5"] == raw_md5  # the same content hash DVC records
    assert record.data.tags["dvc.stage"] == "train" and record.data.tags["kerasflow.entry"] == "dvc"
    assert len(record.data.tags["mlflow.source.git.commit"]) == 40
    artifacts = {item.path for item in client.list_artifacts(run_id, "plots")}
    assert {"plots/training_curves.png", "plots/confusion_matrix.png", "plots/history.csv"} <= artifacts
    model = mlflow.pyfunc.load_model("models:/kerasflow-digits-cnn@champion")
    from tasks.preprocess import read_split

    test = read_split(root / "data/processed", "test")
    x_test, y_test = test.x[:20], test.y[:20]
    served = model.predict(x_test)  # raw 8x8 images in, labels and class probabilities out
    assert (served["label"].to_numpy() == y_test).mean() >= 0.85
    probabilities = served[[f"probability_{digit}" for digit in range(10)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)

    # 4. DVC reads the metrics and renders the plots; the data pushes to the local remote.
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    assert shown[""]["data"]["reports/metrics.json"]["data"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    run(["dvc", "plots", "show", "-o", str(root / "plots_html")], root, env)
    assert (root / "plots_html" / "index.html").is_file()
    assert "pushed" in run(["dvc", "push"], root, env).stdout

    # 5. Only train.epochs changes: train, evaluate and register rerun, nothing upstream.
    #    One epoch makes a deliberately worse model: it is registered, but does not take `champion`.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro"], root, env)
    assert stages_run(third) == ["train", "evaluate", "register"], third.stdout
    worse = json.loads((root / "reports/registration.json").read_text())
    assert worse["alias"] == "challenger" and not worse["checks"]["beats_champion"]
    assert str(client.get_model_version_by_alias("kerasflow-digits-cnn", "champion").version) == registration["version"]
    assert str(client.get_model_version_by_alias("kerasflow-digits-cnn", "challenger").version) == worse["version"]
    assert len(client.search_runs([record.info.experiment_id])) == 2  # one run per pipeline run, not per stage


def test_bad_params_stop_dvc_repro_with_the_key_named(repo):
    root, env = repo
    original = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(original.replace("preprocess:\n", "preprocess:\n  tset_fraction: 0.3\n", 1))
        result = run(["dvc", "repro"], root, env, check=False)
        assert result.returncode != 0
        assert "preprocess.tset_fraction: unknown key" in result.stderr + result.stdout
        assert not (root / "data/processed").exists()  # DVC cleared the stale output; nothing half-written replaced it
    finally:
        (root / "params.yaml").write_text(original)


def test_dvc_sees_every_code_change_and_no_tracking_setting(repo):
    root, env = repo
    params_file, tracking_file = root / "params.yaml", root / "kerasflow" / "tracking.py"
    as_cloned, original_tracking = params_file.read_text(), tracking_file.read_text()

    def changed() -> set[str]:
        status = json.loads(run(["dvc", "status", "--json"], root, env).stdout or "{}")
        return {name.split(":")[-1] for name in status}

    # Up to date whatever the tests before left, on one epoch (what DVC sees does not depend on how long it trains).
    short = yaml.safe_load(as_cloned)
    short["train"]["epochs"] = 1
    original_params = yaml.safe_dump(short, sort_keys=False)
    params_file.write_text(original_params)
    run(["dvc", "repro"], root, env)
    try:
        # Renaming the MLflow experiment moves the record, it does not change any output.
        tree = yaml.safe_load(original_params)
        tree["tracking"]["experiment"] = "renamed"
        params_file.write_text(yaml.safe_dump(tree, sort_keys=False))
        assert changed() == set()
        params_file.write_text(original_params)
        # Code that only train and later stages run: those stages are out of date, nothing before them.
        tracking_file.write_text(original_tracking + "\n# How a stage writes its outputs changed.\n")
        assert changed() == {"train", "evaluate", "register"}
    finally:
        params_file.write_text(original_params)
        tracking_file.write_text(original_tracking)
    assert changed() == set()
    params_file.write_text(as_cloned)
