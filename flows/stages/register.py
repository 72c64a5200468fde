"""Stage register: register the model version and move `champion` only if the gate blesses it."""

from __future__ import annotations

import logging
from typing import Any

import mlflow

from flows.stages import Context
from kerasflow import tracking
from kerasflow.config import Params
from kerasflow.io import read_json, write_json
from tasks.register import apply_decision, champion_metrics, decide, register_version, verify_registered_files

logger = logging.getLogger(__name__)


def run(params: Params, context: Context) -> dict[str, Any]:
    layout = context.layout
    run_info = read_json(layout.run_file)
    result = read_json(layout.metrics)
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
        apply_decision(name, version, decision)
        payload = {
            "model_name": name,
            "version": version,
            "previous_champion": champion_version,
            "smoke_test": files_detail,
            "run_id": run_id,
            **decision.to_dict(),
        }
        mlflow.set_tags({"registry.model": name, "registry.version": version, "registry.alias": decision.alias})
        mlflow.log_dict(payload, "registration.json")
        write_json(layout.registration, payload)
    logger.info("registered %s version %s as %s: %s", name, version, decision.alias, "; ".join(decision.reasons))
    return payload
