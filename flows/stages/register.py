"""Stage register: register the model version and move `champion` only if the gate blesses it."""

from __future__ import annotations

import logging
from typing import Any

import mlflow

from flows.stages import Context
from kerasflow import notes, tracking
from kerasflow.config import Params
from kerasflow.io import read_json, write_json
from kerasflow.records import PreprocessState
from tasks.preprocess import read_state
from tasks.register import apply_decision, champion_metrics, decide, register_version, verify_registered_files

logger = logging.getLogger(__name__)


def run(params: Params, context: Context) -> dict[str, Any]:
    layout = context.layout
    run_info = read_json(layout.run_file)
    result = read_json(layout.metrics)
    state = read_state(layout.processed_dir)
    name = params.register_.model_name
    experiment_id = tracking.configure(params.tracking, context.project_root)
    with tracking.open_run(experiment_id, run_id=run_info["run_id"]) as run_id:
        champion_version, champion = champion_metrics(name)
        version = register_version(run_info["model_uri"], name, run_id)
        # The logged model loaded back and predicted in train; these must be the very files it used.
        files_ok, files_detail = verify_registered_files(f"models:/{name}/{version}", run_info["artifacts_sha256"])
        decision = decide(
            result["test"], result["baseline"], champion, result["primary_metric"], params.register_, files_ok
        )
        payload = {
            "model_name": name,
            "version": version,
            "previous_champion": champion_version,
            "smoke_test": files_detail,
            "run_id": run_id,
            **decision.to_dict(),
        }
        describe_model(name, state)
        description = version_text(name, version, state, result, payload)
        # The logged model's page (MLflow's "Logged models") carries the same account as the version's.
        mlflow.set_logged_model_tags(run_info["model_id"], {"mlflow.note.content": description})
        apply_decision(name, version, decision, description)
        mlflow.set_tags({"registry.model": name, "registry.version": version, "registry.alias": decision.alias})
        mlflow.log_dict(payload, "registration.json")
        write_json(layout.registration, payload)
        tracking.describe_run(run_id, payload)
    logger.info("registered %s version %s as %s: %s", name, version, decision.alias, "; ".join(decision.reasons))
    return payload


def source_of(state: PreprocessState) -> str:
    return state.source_label or "its data"


def version_text(
    name: str, version: str, state: PreprocessState, result: dict[str, Any], payload: dict[str, Any]
) -> str:
    run = {"run_id": payload["run_id"], "task": state.task, "source": source_of(state)}
    columns = state.inputs.column_names or ["image"]
    return notes.version_description(name, version, run, result, payload, columns)


def describe_model(name: str, state: PreprocessState) -> None:
    """The registered model's own description: what it is and how to load its champion."""
    from mlflow.tracking import MlflowClient

    columns = state.inputs.column_names or ["image"]
    MlflowClient().update_registered_model(
        name, description=notes.registered_model_description(name, state.task, source_of(state), columns)
    )
