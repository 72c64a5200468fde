"""Prefect events about registered models, and the trigger record a retraining run carries.

kerasflow emits four events, each about one registered model (`kerasflow.model.<name>`, the
version a related resource):

- `kerasflow.drift.detected`: a scored file drifted past its thresholds (`kerasflow predict`, the
  batch-prediction flow). The resource also carries the prediction run as a label, so a trigger can
  insist on it: an event without one (malformed, or not kerasflow's) matches no automation.
- `kerasflow.prediction.completed`: a file was scored, with its row count and whether it drifted.
- `kerasflow.champion.changed`: the gate moved `champion` (old and new versions, its reasons).
- `kerasflow.registration.rejected`: a candidate stayed challenger (the checks it failed).

`prefect.yaml`'s `retrain-on-drift` deployment is triggered by the first of these; the training
flow receives the event as its `trigger` parameter (`Trigger`), tags its MLflow run and registry
version with it and says why it ran. Sending an event never fails a run: without a Prefect API it is a
no-op (logged at debug level), and a failure to send is a warning. Prefect's events worker sends them in
the background and drains at exit.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kerasflow.config import ConfigError

if TYPE_CHECKING:
    from kerasflow.records import DriftReport

logger = logging.getLogger(__name__)

DRIFT_DETECTED = "kerasflow.drift.detected"
PREDICTION_COMPLETED = "kerasflow.prediction.completed"
CHAMPION_CHANGED = "kerasflow.champion.changed"
REGISTRATION_REJECTED = "kerasflow.registration.rejected"
# The resource label naming the predictions run (in MLflow) that found the drift.
PREDICTION_RUN_LABEL = "kerasflow.prediction-run"


def model_resource(model_name: str, **labels: str) -> dict[str, str]:
    return {"prefect.resource.id": f"kerasflow.model.{model_name}", "prefect.resource.name": model_name, **labels}


def prefect_api() -> str | None:
    """The Prefect API events would go to, or None (then nothing is sent)."""
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def emit(
    event: str,
    model_name: str,
    version: str | None,
    payload: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> str | None:
    """Send `event` about `model_name` (version `version`, a related resource); return its id, or None if it was
    not sent. Never raises: events tell others what happened, they are not part of the work."""
    if prefect_api() is None:
        logger.debug("no Prefect API configured (PREFECT_API_URL): event %s about %s not sent", event, model_name)
        return None
    related = []
    if version:
        related.append(
            {
                "prefect.resource.id": f"kerasflow.model.{model_name}.version.{version}",
                "prefect.resource.role": "model-version",
                "prefect.resource.name": f"{model_name} v{version}",
            }
        )
    try:
        from prefect.events import emit_event

        sent = emit_event(
            event=event, resource=model_resource(model_name, **(labels or {})), related=related, payload=payload
        )
    except Exception as error:  # noqa: BLE001 - an event lost is a warning, never a failed run
        logger.warning("could not send the Prefect event %s about %s: %s", event, model_name, error)
        return None
    if sent is None:
        logger.debug("Prefect is not emitting events here: %s about %s not sent", event, model_name)
        return None
    logger.info("event %s about %s sent (id %s)", event, model_name, sent.id)
    return str(sent.id)


def read_events(model_name: str | None = None, limit: int = 50) -> list[Any]:
    """kerasflow's events in the Prefect API's event feed (about `model_name`, if given), newest first."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    resource = EventResourceFilter(id=[model_resource(model_name)["prefect.resource.id"]]) if model_name else None
    wanted = EventFilter(event=EventNameFilter(prefix=["kerasflow."]), resource=resource)
    with get_client(sync_client=True) as client:
        return list(client.read_events(wanted, limit=limit).events)


def drift_reason(report: DriftReport, prediction_run_id: str | None) -> str:
    """`column area drifted (PSI 0.42) in predictions run 1f2e…`, from a drift report."""
    parts = [f"`{name}` ({reasons})" for name, reasons in report.reasons()]
    noun = "column" if len(parts) == 1 else "columns"
    where = f" in predictions run {prediction_run_id}" if prediction_run_id else ""
    return f"{noun} {', '.join(parts)} drifted{where}"


def drift_payload(report: DriftReport, scored_file: str, prediction_run_id: str | None, report_path: str) -> dict:
    measures = ("psi", "unseen_share", "missing_share_training", "missing_share_new")
    columns = {}
    for name in report.drifted:
        values = {key: getattr(report.columns[name], key) for key in measures}
        columns[name] = {key: value for key, value in values.items() if value is not None}
    return {
        "reason": drift_reason(report, prediction_run_id),
        "drifted": columns,
        "rows": report.rows,
        "scored_file": scored_file,
        "prediction_run_id": prediction_run_id,
        "report": report_path,
    }


@dataclass(frozen=True)
class Trigger:
    """Why a training run was started by an automation: the event, its reason and the run that saw it."""

    kind: str
    event_id: str
    reason: str
    prediction_run_id: str
    model: str

    KINDS = ("drift",)

    @classmethod
    def from_parameter(cls, value: dict[str, Any] | None, model_name: str) -> Trigger | None:
        """The flow's `trigger` parameter, checked: a malformed one, or one about another model, is refused
        before any work (the automation's match should never let one through)."""
        if not value:
            return None
        if not isinstance(value, dict):
            raise ConfigError(f"flow parameter trigger: expected a mapping, got {value!r}")
        fields = {key: str(value.get(key) or "") for key in ("kind", "event_id", "reason", "prediction_run_id")}
        fields["model"] = str(value.get("model") or "").removeprefix("kerasflow.model.")
        problems = [f"{key} is missing" for key, text in fields.items() if not text]
        if fields["kind"] and fields["kind"] not in cls.KINDS:
            problems.append(f"kind {fields['kind']!r} is not one of {list(cls.KINDS)}")
        try:
            uuid.UUID(fields["event_id"])
        except ValueError:
            problems.append(f"event_id {fields['event_id']!r} is not an event id")
        if fields["model"] and fields["model"] != model_name:
            problems.append(f"the event is about {fields['model']!r}, this pipeline registers {model_name!r}")
        if problems:
            raise ConfigError(f"flow parameter trigger: {'; '.join(problems)}; nothing was trained")
        return cls(**fields)

    @property
    def description(self) -> str:
        return f"retrained because {self.reason} (Prefect event {self.event_id})"

    def tags(self) -> dict[str, str]:
        return {
            "kerasflow.trigger": self.kind,
            "kerasflow.trigger.event_id": self.event_id,
            "kerasflow.trigger.prediction_run_id": self.prediction_run_id,
            "kerasflow.trigger.reason": self.description,
        }
