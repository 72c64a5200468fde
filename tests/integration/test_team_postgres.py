"""The README's team set-up, as written: MLflow's and Prefect's servers on PostgreSQL (Debian's package), the
pipeline run against both, a champion and a challenger registered, and predictions through the registry."""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.servers import (
    BIN,
    background,
    clone_project,
    digits_file,
    free_port,
    postgres_query,
    postgres_server,
    project_env,
    run,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_team_setup_on_postgresql_runs_registers_and_predicts(tmp_path):
    project = clone_project(tmp_path / "project")
    with postgres_server(("mlflow", "prefect")) as database:
        mlflow_port, prefect_port = free_port(), free_port()
        # As the README writes them: SQLAlchemy 2 reads a bare postgresql:// as psycopg 3.
        tracking = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            "--backend-store-uri", f"postgresql+psycopg2://postgres@{database}/mlflow",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ]  # fmt: skip
        prefect_env = {
            **os.environ,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{database}/prefect",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "true",
        }
        orchestration = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
        with (
            background(tracking, tmp_path / "mlflow.log", dict(os.environ)) as mlflow_server,
            background(orchestration, tmp_path / "prefect.log", prefect_env) as prefect_server,
        ):
            wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", mlflow_server, tmp_path / "mlflow.log")
            wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", prefect_server, tmp_path / "prefect.log")
            env = {
                **project_env(project),
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                "PREFECT_HOME": str(tmp_path / "client-home"),
            }
            kerasflow = str(BIN / "kerasflow")
            quick = [
                "--set",
                "train.epochs=3",
                "--set",
                "register.require_beat_baseline=false",
                "--set",
                "register.thresholds={}",
            ]
            run([kerasflow, "run", *quick], project, env)
            first = json.loads((project / "reports" / "registration.json").read_text())
            run([kerasflow, "run", *quick, "--set", "train.epochs=1"], project, env)
            second = json.loads((project / "reports" / "registration.json").read_text())

            # Both registered in the PostgreSQL-backed registry, one of them the champion; both runs and both
            # flow runs are rows of the two databases.
            assert (first["version"], second["version"]) == ("1", "2")
            assert first["alias"] == "champion" and second["alias"] in ("champion", "challenger")
            versions = postgres_query(database, "mlflow", "SELECT count(*) FROM model_versions")
            assert versions == "2"
            assert postgres_query(database, "mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'") == "2"
            flow_runs = "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'"
            assert int(postgres_query(database, "prefect", flow_runs)) >= 2

            # The champion at work, loaded through the tracking server from the registry.
            rows = digits_file(tmp_path / "new.csv", rows=100)
            scored = tmp_path / "scored.csv"
            result = run([kerasflow, "predict", "--input", str(rows), "--output", str(scored)], project, env)
            assert "predictions" in result.stdout
            import pandas as pd

            predictions = pd.read_csv(scored)
            assert len(predictions) == 100 and set(predictions["model_version"].astype(str)) <= {"1", "2"}
            champion = "1" if second["alias"] == "challenger" else "2"
            assert set(predictions["model_version"].astype(str)) == {champion}
