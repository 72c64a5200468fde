"""Shared fixtures: tiny in-memory data, an isolated MLflow store, quiet telemetry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kerasflow.runtime import QUIET_ENVIRONMENT

REPO_ROOT = Path(__file__).resolve().parents[1]

for _name, _value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)


def use_store(database: Path):
    """Point MLflow's tracking and registry at one sqlite store; return a client for it."""
    import mlflow

    uri = f"sqlite:///{database}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # Otherwise the registry stays wherever an earlier test pointed it.
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(autouse=True)
def no_inherited_store():
    """`mlflow.set_tracking_uri` and `set_registry_uri` also set MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI in
    the environment, so that subprocesses inherit them: one test's store must not become the store of the next
    test's subprocesses."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    yield
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for one test; returns its URI."""
    import mlflow

    # MLflow's Default experiment keeps artifacts in ./mlruns of the working folder: the test's own.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    use_store(tmp_path / "mlflow.db")
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def tabular_frame() -> pd.DataFrame:
    """60 rows, two numeric features, a balanced binary label that depends on them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": (x[:, 0] + x[:, 1] > 0).astype(int)})


@pytest.fixture
def tabular_meta():
    from kerasflow.records import RawDatasetInfo

    return RawDatasetInfo(target="label", task="classification", feature_columns=["a", "b"], md5="x", file="t.parquet")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (sqlite) for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
