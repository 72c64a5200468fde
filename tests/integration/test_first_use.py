"""A new user's first steps in a clone of the project: their own CSV named in params.yaml (one clear error, no
traceback), then `kerasflow init` on it, `kerasflow run` and `dvc repro`, each working."""

from __future__ import annotations

import pytest
import yaml

from kerasflow import samples
from tests.integration.servers import clone_project, project_env, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_your_own_csv_in_one_command_then_kerasflow_run_and_dvc_repro(tmp_path):
    root = tmp_path / "project"
    env = project_env(root)
    clone_project(root, env)
    samples.house_prices(rows=600).to_csv(root / "houses.csv", index=False)

    # As the README's ingest section has it, without init: the data has gaps the defaults refuse. One message,
    # naming the user's file, no traceback (Prefect's task and flow logs keep it).
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"].update(source="file", path="houses.csv", target="price")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["kerasflow", "run"], root, env, check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("kerasflow: ")]
    assert len(errors) == 1 and f"{root / 'houses.csv'}: 4 validation problem(s)" in errors[0], failed.stderr
    assert "max_missing_fraction" in failed.stderr and "dataset.parquet" not in failed.stderr
    assert len(failed.stderr.splitlines()) < 20  # it was 96 lines for this one error
    run(["git", "checkout", "params.yaml"], root, env)

    chosen = run(["kerasflow", "init", "--data", "houses.csv", "--target", "price"], root, env)
    assert "ingest.task = 'regression'" in chosen.stdout and "validate.max_missing_fraction" in chosen.stdout
    written = yaml.safe_load((root / "params.yaml").read_text())
    assert written["ingest"]["path"] == "houses.csv" and written["register"]["model_name"] == "kerasflow-houses-mlp"
    assert not (root / "data" / "schema.json").exists()  # the digits schema is cleared
    assert "houses.csv" in (root / "dvc.yaml").read_text()
    deployments = (root / "prefect.yaml").read_text()  # reproduce's default and the retraining trigger follow
    assert "kerasflow.model.kerasflow-houses-mlp" in deployments and "kerasflow-digits-cnn" not in deployments

    flow = run(["kerasflow", "run"], root, env)
    assert "registered      kerasflow-houses-mlp version 1 -> champion" in flow.stdout, flow.stdout
    r2 = float(next(line.split()[2] for line in flow.stdout.splitlines() if line.strip().startswith("test r2")))
    assert r2 > 0.8

    repro = run(["dvc", "repro"], root, env)
    assert "Running stage 'register'" in repro.stdout
    registration = yaml.safe_load((root / "reports" / "registration.json").read_text())
    assert registration["model_name"] == "kerasflow-houses-mlp" and registration["version"] == "2"
    assert "up to date" in run(["dvc", "status"], root, env).stdout
