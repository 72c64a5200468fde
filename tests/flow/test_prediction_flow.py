"""The batch-prediction flow under Prefect's test harness: a champion scores a file; drift shows as a table."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pandas as pd
import yaml

from tests.conftest import use_store


def test_batch_prediction_scores_with_the_champion_and_publishes_the_drift(prefect_harness, tmp_path, monkeypatch):
    from prefect import get_client

    from flows.prediction import batch_prediction
    from kerasflow import tracking
    from kerasflow.config import RegisterParams, TrackingParams
    from kerasflow.tracking import apply_decision, register_version
    from tasks.register import decide
    from tests.unit.helpers import log_mixed_model, mixed_frame

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"register": {"model_name": "mixed"}}))
    use_store(tmp_path / "mlflow.db")
    experiment_id = tracking.configure(TrackingParams(), tmp_path)
    with tracking.open_run(experiment_id) as run_id:
        uri, _, prepared, _ = log_mixed_model(tmp_path, "classification", statistics=True)
    version = register_version(uri, "mixed", run_id)
    apply_decision("mixed", version, decide({"accuracy": 1.0}, {"accuracy": 0.5}, None, "accuracy", RegisterParams()))
    new = mixed_frame(rows=200, seed=5).drop(columns=["note", "label"])
    new["size"] = new["size"] + 5.0  # far outside training's sizes
    new.to_csv(tmp_path / "new.csv", index=False)

    state = batch_prediction(
        input_path=str(tmp_path / "new.csv"), params_path=str(tmp_path / "params.yaml"), return_state=True
    )
    assert state.is_completed(), state
    result = state.result()
    assert result.rows == 200 and (result.model_name, result.model_version) == ("mixed", version)
    scored = pd.read_csv(tmp_path / "new.predictions.csv")
    assert len(scored) == 200 and set(scored["label"]) <= {0, 1} and np.all(scored["model_version"] == int(version))
    assert result.summary.startswith("drift: size PSI")

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    table = next(
        a for a in asyncio.run(artifacts()) if a.key == "drift" and a.flow_run_id == state.state_details.flow_run_id
    )
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert {row["column"]: row["drifted"].startswith("yes") for row in rows} == {"size": True, "color": False}

    # Prefect's event feed heard of it: the drift (naming the column, the file and the predictions run) and the
    # completed scoring; both about the registered model, the version a related resource.
    from kerasflow import events

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sent = {event.event: event for event in events.read_events("mixed")}
        if {events.DRIFT_DETECTED, events.PREDICTION_COMPLETED} <= set(sent):
            break
        time.sleep(1)
    drift = sent[events.DRIFT_DETECTED]
    assert drift.resource[events.PREDICTION_RUN_LABEL] == result.run_id
    assert drift.payload["prediction_run_id"] == result.run_id and list(drift.payload["drifted"]) == ["size"]
    assert drift.payload["drifted"]["size"]["psi"] > 0.2 and drift.payload["scored_file"].endswith("new.csv")
    assert drift.payload["reason"].startswith("column `size` (PSI ")
    related = {item.id for item in drift.related}
    assert f"kerasflow.model.mixed.version.{version}" in related  # and the flow run that sent it (Prefect adds it)
    assert f"prefect.flow-run.{state.state_details.flow_run_id}" in related
    completed = sent[events.PREDICTION_COMPLETED].payload
    assert completed["rows"] == 200 and completed["drift_found"] is True
