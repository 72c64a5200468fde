"""Stage register: register the model version and move `champion` only if the gate blesses it.

Read the champion, compare, move the alias: for one registered model, only one run at a time does
that (`registry_lock`), and the champion is read again inside the lock; if it changed since
evaluate re-scored it, the new one is re-scored on this run's test rows before the comparison.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from flows.stages import Context
from kerasflow import notes, tracking
from kerasflow.config import Params
from kerasflow.io import write_json, write_text
from kerasflow.layout import Layout
from kerasflow.records import Evaluation, PreprocessState, Registration, TrainingResult
from tasks.preprocess import read_state, split_source
from tasks.register import decide, verify_registered_files

logger = logging.getLogger(__name__)

# How long a registration waits for another one of the same model to finish.
LOCK_TIMEOUT_SECONDS = 900


def run(params: Params, context: Context) -> Registration:
    layout = context.layout
    trained = TrainingResult.read(layout.run_file)
    evaluation = Evaluation.read(layout.metrics)
    state = read_state(layout.processed_dir)
    name = params.register_.model_name
    experiment_id = tracking.configure(params.tracking, context.project_root)
    with tracking.open_run(experiment_id, run_id=trained.run_id) as run_id:
        with registry_lock(name, tracking.current_uri()):
            evaluation = current_evaluation(params, context, evaluation, state)
            run_tags = tracking.run_tags(run_id)
            version = tracking.register_version(trained.model_uri, name, run_id, version_tags(run_tags))
            # The logged model loaded back and predicted in train; these must be the very files it used.
            files_ok, files_detail = verify_registered_files(f"models:/{name}/{version}", trained.artifacts_sha256)
            decision = decide(
                evaluation.test,
                evaluation.baseline,
                evaluation.champion_rescored,
                evaluation.primary_metric,
                params.register_,
                files_ok,
                dvc_experiment=os.environ.get("DVC_EXP_NAME"),
                reference_scores=evaluation.reference,
                evidence=evaluation,
            )
            registration = Registration(
                name, version, run_id, decision, evaluation.champion_rescored, files_detail, evaluation.comparisons
            )
            describe_model(name, state)
            description = version_text(params, layout, state, evaluation, registration, run_tags, trained)
            # The logged model's page carries the same account as the version's.
            tracking.describe_logged_model(trained.model_id, description)
            tracking.apply_decision(name, version, decision, description, trained.artifacts_sha256)
        payload = registration.to_dict()
        tracking.set_tags(
            run_id, {"registry.model": name, "registry.version": version, "registry.alias": decision.alias}
        )
        tracking.log_dict(run_id, payload, "registration.json")
        tracking.log_text(run_id, description, "model_card.md")
        write_text(layout.model_card, description)
        write_json(layout.registration, payload)
        tracking.describe_run(run_id, payload)
    announce(registration)
    logger.info("registered %s version %s as %s: %s", name, version, decision.alias, "; ".join(decision.reasons))
    return registration


def version_tags(tags: dict[str, str]) -> dict[str, str]:
    """What the version carries from its run: the tuning study, its MLflow run and the trial (for the best
    configuration of a study); the event that started a retraining (`kerasflow.trigger*`)."""
    carried = {key: value for key, value in tags.items() if key.startswith("kerasflow.trigger")}
    if "kerasflow.study" in tags:
        carried |= {
            "kerasflow.study": tags["kerasflow.study"],
            "kerasflow.study_run": tags.get("mlflow.parentRunId", ""),
            "optuna.trial": tags.get("optuna.trial", ""),
        }
    return carried


def announce(registration: Registration) -> None:
    """`kerasflow.champion.changed` when the gate moved the alias, `kerasflow.registration.rejected` when the
    candidate stayed challenger (no-ops without a Prefect API)."""
    from kerasflow import events

    name, version, previous = registration.model_name, registration.version, registration.previous_champion
    reasons, run_id = registration.decision.reasons, registration.run_id
    if registration.decision.promote:
        if previous != version:
            changed = {"previous_version": previous, "new_version": version, "reasons": reasons, "run_id": run_id}
            events.emit(events.CHAMPION_CHANGED, name, version, changed)
    else:
        failed = registration.failed_checks
        rejected = {"failed_checks": failed, "reasons": reasons, "champion": previous, "run_id": run_id}
        events.emit(events.REGISTRATION_REJECTED, name, version, rejected)


def current_evaluation(params: Params, context: Context, evaluation: Evaluation, state: PreprocessState) -> Evaluation:
    """The evaluation against the champion as it is now: evaluate's, if the champion is the one evaluate saw,
    else with the new one re-scored on this run's test rows and weighed against the candidate (the only case in
    which register loads TensorFlow)."""
    from tasks.champion import current_champion, rescore_outputs

    name, rescored = params.register_.model_name, evaluation.champion_rescored
    version = current_champion(name)
    if rescored is not None and version == rescored.version:
        return evaluation
    if version is None:
        return evaluation.with_champion(None)
    logger.info("the champion changed to version %s since evaluate; re-scoring it on this run's test rows", version)
    from flows.stages.evaluate import against_new_champion, champion_cache

    test_split = split_source(context.layout.processed_dir, "test", state)
    found = rescore_outputs(name, version, test_split, state, params.evaluate.batch_rows, champion_cache(context))
    return against_new_champion(params, context.layout, state, evaluation, found)


@contextlib.contextmanager
def registry_lock(model_name: str, tracking_uri: str) -> Iterator[None]:
    """One registration of `model_name` at a time: a lock file beside a local store (every process on this
    machine: DVC stages, flow runs), and a Prefect global concurrency slot in a flow run (every worker)."""
    with contextlib.ExitStack() as stack:
        lock = tracking.lock_beside_store(tracking_uri, f"register-{model_name}", timeout=LOCK_TIMEOUT_SECONDS)
        if lock is not None:
            stack.enter_context(lock)
        if in_flow_run():
            stack.enter_context(prefect_slot(f"kerasflow-register-{model_name}"))
        yield


def in_flow_run() -> bool:
    if "prefect" not in sys.modules:
        return False
    from prefect.runtime import flow_run

    return flow_run.id is not None


@contextlib.contextmanager
def prefect_slot(limit: str) -> Iterator[None]:
    """Hold the one slot of the global concurrency limit `limit` (created with one slot if it is missing)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    with concurrency(limit, occupy=1, timeout_seconds=LOCK_TIMEOUT_SECONDS, strict=True):
        yield


def source_of(state: PreprocessState) -> str:
    return state.source_label or "its data"


def version_text(
    params: Params,
    layout: Layout,
    state: PreprocessState,
    evaluation: Evaluation,
    registration: Registration,
    run_tags: dict[str, str],
    trained: TrainingResult,
) -> str:
    """The version's model card: its description in the registry and `model_card.md`."""
    run = {"run_id": registration.run_id, "task": state.task, "source": source_of(state)}
    if run_tags.get("kerasflow.trigger.reason"):
        run["why"] = run_tags["kerasflow.trigger.reason"]
    columns = state.inputs.column_names or ["image"]
    summary = layout.model_summary.read_text() if layout.model_summary.is_file() else ""
    facts = notes.CardFacts(
        registration.model_name,
        registration.version,
        run,
        evaluation,
        registration.decision.to_dict(),
        columns,
        state=state,
        model_summary=summary,
        drift=params.predict.drift.model_dump(),
        min_slice_rows=params.register_.min_slice_rows,
        cross_fit_members=trained.cross_fit_members,
    )
    return notes.model_card(facts)


def describe_model(name: str, state: PreprocessState) -> None:
    """The registered model's own description: what it is and how to load its champion."""
    columns = state.inputs.column_names or ["image"]
    tracking.describe_registered_model(
        name, notes.registered_model_description(name, state.task, source_of(state), columns)
    )
