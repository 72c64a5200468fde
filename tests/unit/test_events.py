"""kerasflow's Prefect events: silent without a Prefect API, never failing a run; the trigger a retraining
receives, checked before any work."""

from __future__ import annotations

import logging
import uuid

import pytest

from kerasflow import events
from kerasflow.config import ConfigError
from kerasflow.records import (
    ColumnDrift,
    Decision,
    DriftReport,
    Evaluation,
    PipelineResult,
    Registration,
    TrainingResult,
)

EVENT_ID = str(uuid.uuid4())


def drift_report() -> DriftReport:
    area = ColumnDrift("numeric", 0.0, 0.0, psi=0.42, drifted=True, reasons=["PSI 0.42"])
    return DriftReport(500, 1000, {"psi": 0.2}, {"area": area, "rooms": ColumnDrift("numeric", 0.0, 0.0, psi=0.01)})


def test_without_a_prefect_api_emitting_is_a_debug_line_and_sends_nothing(monkeypatch, caplog):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(events, "prefect_api", lambda: None)
    sent = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kwargs: sent.append(kwargs))
    with caplog.at_level(logging.DEBUG, logger="kerasflow.events"):
        assert events.emit(events.DRIFT_DETECTED, "houses", "3", {"reason": "x"}) is None
    assert sent == []
    assert "no Prefect API configured (PREFECT_API_URL): event kerasflow.drift.detected about houses" in caplog.text
    assert all(record.levelno == logging.DEBUG for record in caplog.records)


def test_a_failure_to_send_is_a_warning_never_an_error(monkeypatch, caplog):
    monkeypatch.setattr(events, "prefect_api", lambda: "http://127.0.0.1:9/api")

    def refuse(**kwargs):
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr("prefect.events.emit_event", refuse)
    with caplog.at_level(logging.WARNING, logger="kerasflow.events"):
        assert events.emit(events.CHAMPION_CHANGED, "houses", "3", {}) is None
    assert "could not send the Prefect event kerasflow.champion.changed about houses: connection refused" in caplog.text


def test_an_event_is_about_the_model_with_its_version_related_and_labels_on_the_resource(monkeypatch):
    monkeypatch.setattr(events, "prefect_api", lambda: "http://127.0.0.1:9/api")
    sent = {}

    class Sent:
        id = EVENT_ID

    def capture(**kwargs):
        sent.update(kwargs)
        return Sent()

    monkeypatch.setattr("prefect.events.emit_event", capture)
    labels = {events.PREDICTION_RUN_LABEL: "run-1"}
    assert events.emit(events.DRIFT_DETECTED, "houses", "3", {"reason": "x"}, labels) == EVENT_ID
    assert sent["resource"] == {
        "prefect.resource.id": "kerasflow.model.houses",
        "prefect.resource.name": "houses",
        "kerasflow.prediction-run": "run-1",
    }
    assert sent["related"][0]["prefect.resource.id"] == "kerasflow.model.houses.version.3"
    assert sent["related"][0]["prefect.resource.role"] == "model-version"


def test_the_drift_payload_names_the_drifted_columns_the_file_and_the_run():
    payload = events.drift_payload(drift_report(), "/data/new.csv", "run-1", "/data/new.drift.json")
    assert payload["drifted"] == {"area": {"psi": 0.42, "missing_share_training": 0.0, "missing_share_new": 0.0}}
    assert payload["reason"] == "column `area` (PSI 0.42) drifted in predictions run run-1"
    assert payload["scored_file"] == "/data/new.csv" and payload["rows"] == 500


def test_a_well_formed_trigger_becomes_tags_and_a_reason():
    trigger = events.Trigger.from_parameter(
        {"kind": "drift", "event_id": EVENT_ID, "reason": "column `area` (PSI 0.42) drifted in predictions run r1",
         "prediction_run_id": "r1", "model": "kerasflow.model.houses"},
        "houses",
    )  # fmt: skip
    assert trigger.tags() == {
        "kerasflow.trigger": "drift",
        "kerasflow.trigger.event_id": EVENT_ID,
        "kerasflow.trigger.prediction_run_id": "r1",
        "kerasflow.trigger.reason": f"retrained because column `area` (PSI 0.42) drifted in predictions run r1 "
        f"(Prefect event {EVENT_ID})",
    }
    assert events.Trigger.from_parameter(None, "houses") is None


@pytest.mark.parametrize(
    "value, problem",
    [
        ({"kind": "drift", "event_id": "not-an-id", "reason": "r", "prediction_run_id": "p"}, "is not an event id"),
        ({"kind": "drift", "event_id": EVENT_ID, "reason": "r"}, "prediction_run_id is missing"),
        ({"kind": "drift", "event_id": EVENT_ID, "reason": "r", "prediction_run_id": "p", "model": "other"},
         "the event is about 'other', this pipeline registers 'houses'"),
        ({"kind": "schedule", "event_id": EVENT_ID, "reason": "r", "prediction_run_id": "p"}, "kind 'schedule'"),
        ("drift", "expected a mapping"),
    ],
)  # fmt: skip
def test_a_malformed_trigger_or_one_about_another_model_is_refused_by_name(value, problem):
    with pytest.raises(ConfigError, match="flow parameter trigger") as refused:
        events.Trigger.from_parameter(value, "houses")
    assert problem in str(refused.value)


def test_the_reason_reaches_the_run_the_version_and_the_prefect_summary():
    from kerasflow import notes

    reason = f"retrained because column `area` (PSI 0.42) drifted in predictions run r1 (Prefect event {EVENT_ID})"
    tags = {"kerasflow.trigger.reason": reason, "registry.model": "houses"}
    assert f"- **Why it ran:** {reason}" in notes.run_description(tags, {})
    evaluation = Evaluation("regression", "r2", {"r2": 0.9}, {"r2": 0.8}, 900, True, 90, baseline_name="Ridge")
    decision = {"alias": "champion", "reasons": ["r2 0.9 beats the baseline's 0.8"]}
    run = {"run_id": "abc", "task": "regression", "source": "houses.csv", "why": reason}
    assert f"**Why it was trained:** {reason}." in notes.version_description(
        "houses", "2", run, evaluation, decision, ["area"]
    )
    training = TrainingResult("abc", "1", "models:/m-1", "m-1", "0" * 64, "sqlite:///mlflow.db", None, 3, 2)
    registration = Registration("houses", "2", "abc", Decision(True, decision["reasons"]))
    result = PipelineResult("abc", "/project", "sqlite:///mlflow.db", training, evaluation, registration)
    assert f"**Why it ran:** {reason}" in notes.flow_summary(result, {}, tags)
