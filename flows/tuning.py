"""The Prefect tuning pipeline: one Optuna study, its trials as Prefect tasks, one winner through the gate.

    tuning-pipeline
      open-study                      the Optuna study (continued if it exists) and its parent MLflow run
      ingest → validate → preprocess  once per study, cached as in the training pipeline
      study-trials                    a subflow running `tune.parallelism` trials at once (threads, or Dask)
        trial-0, trial-1, ...         each fits one configuration in its own nested MLflow run (tasks/trial.py)
      summarize-study                 the parent run's table, charts, best value and params (tasks/tune_report.py)
      train → evaluate → register     the best configuration, through the same gate as a single run

Run it with `kerasflow tune`; deploy it with prefect.yaml (deployment `tune`). A study killed
part-way continues when it is run again: finished trials stay, interrupted ones run again. This module is the
wiring; what it passes along are records (kerasflow/records.py: StudyPlan, TrialResult, StudySummary,
StudyRegistration, StudyResult).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.stages import DATA_STAGES, Context
from flows.training import edge_only, run_folder, run_stages, stopped_from_outside, tag_flow_run
from kerasflow.config import Params, load_params, parse_params
from kerasflow.errors import ExpectedError
from kerasflow.layout import Layout
from kerasflow.records import BestTrial, StudyPlan, StudyRegistration, StudyResult, TrialResult
from kerasflow.runtime import attach_to_prefect_logging, quiet_defaults
from kerasflow.search_space import check_search_space

logger = logging.getLogger(__name__)

# What runs after the trials, for the best configuration.
MODEL_STAGES = ("train", "evaluate", "register")
# The parent run's tag holding the trial whose configuration was last retrained and registered.
REGISTERED_TRIAL = "kerasflow.study.registered_trial"


class StudyError(ExpectedError, RuntimeError):
    """A study that cannot go on or gave nothing to register (every trial failed or was pruned)."""


@contextlib.contextmanager
def study_lock(storage: str, study: str) -> Iterator[None]:
    """One run of a study at a time (on this machine, for a local sqlite study): while it holds the lock,
    any trial still RUNNING in the study was interrupted by a kill."""
    if not storage.startswith("sqlite:///"):
        yield
        return
    from filelock import Timeout

    from kerasflow import tracking

    lock = tracking.lock_beside_store(storage, study)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StudyError(f"study {study!r} in {storage} is being run by another process; wait for it") from None
    try:
        yield
    finally:
        lock.release()


def open_study(params: Params, project_root: Path, workdir: Path, storage: str, processed_dir: Path) -> StudyPlan:
    """Create or continue the study and its parent MLflow run; trials a kill interrupted are queued again."""
    from kerasflow import tracking
    from tasks import tune

    experiment_id = tracking.configure(params.tracking, project_root)
    uri = tracking.current_uri()
    name = tune.study_name(params)
    study = tune.open_study(params, name, storage)
    interrupted = tune.recover_interrupted(study)
    parent = study.user_attrs.get("mlflow_run_id")
    if parent and tracking.run_exists(parent):
        tracking.reopen_run(experiment_id, parent)  # trials' runs left open by a kill are closed KILLED
    else:
        parent = begin_study_run(params, project_root, workdir, name, storage)
        study.set_user_attr("mlflow_run_id", parent)
    done = len(tune.counted_trials(study))
    logger.info(
        "study %s (%s): %d of %d trial(s) done%s",
        name,
        storage,
        done,
        tune.trials_wanted(params.tune),
        f"; trials {interrupted} interrupted, to run again" if interrupted else "",
    )
    return StudyPlan(name, storage, uri, experiment_id, parent, params.to_dict(), processed_dir)


def begin_study_run(params: Params, project_root: Path, workdir: Path, name: str, storage: str) -> str:
    """The parent MLflow run: what the study searches (its params), lineage, the params file it started from."""
    from kerasflow import tracking
    from tasks import tune

    settings = params.tune
    run_id = tracking.begin_pipeline_run(
        params,
        project_root,
        workdir,
        tags={
            "kerasflow.kind": "study",
            "optuna.study": name,
            "optuna.storage": storage,
            "mlflow.source.name": "flows/tuning.py:tuning_pipeline",
        },
        run_name=name,
    )
    searched = {f"space.{key}": describe_dimension(dimension) for key, dimension in settings.space.items()}
    fixed = {
        "tune.sampler": settings.sampler,
        "tune.pruner": settings.pruner,
        "tune.metric": settings.metric,
        "tune.direction": tune.direction(settings),
        "tune.epochs": settings.epochs or params.train.epochs,
        "tune.warmup_epochs": settings.warmup_epochs,
        "tune.startup_trials": settings.startup_trials,
    }
    tracking.log_params(run_id, {key: str(value) for key, value in {**fixed, **searched}.items()})
    return run_id


def describe_dimension(dimension: Any) -> str:
    kind = dimension.kind
    values = getattr(dimension, kind)
    step = f" step {dimension.step:g}" if dimension.step else ""
    return f"{kind} {list(values)}{step}"


@flow(name="study-trials")
def study_trials(plan: StudyPlan) -> list[TrialResult]:
    """Ask the study for trials and run them as Prefect tasks, `parallelism` at a time on this flow's task
    runner, telling the study how each ended as soon as it does (so the next one asked learns from it)."""
    from tasks import tune

    params = parse_params(plan.base)
    study = tune.open_study(params, plan.study, plan.storage)
    space = tune.distributions(params.tune.space, grid=params.tune.sampler == "grid")
    remaining = tune.trials_wanted(params.tune) - len(tune.counted_trials(study))
    from tasks.trial import run_trial

    trial_task = task(run_trial, name="trial", task_run_name="trial-{number}", cache_policy=NO_CACHE)
    running: dict[Any, Any] = {}
    results: list[TrialResult] = []
    deadline = time.monotonic() + params.tune.time_budget if params.tune.time_budget else None
    while remaining > 0 or running:
        if remaining > 0 and deadline is not None and time.monotonic() >= deadline:
            # tune.time_budget is spent: the trials running finish, no new one starts.
            logger.info("tune.time_budget of %d s spent: %d trial(s) not started", params.tune.time_budget, remaining)
            remaining = 0
            if not running:
                break
        while remaining > 0 and len(running) < params.tune.parallelism:
            trial = study.ask(space)
            trial_id = trial._trial_id  # noqa: SLF001 (what optuna.trial.Trial needs to rebuild it in the task)
            running[trial_task.submit(plan, trial.number, trial_id, tune.decode(trial.params))] = trial
            remaining -= 1
        future = next(as_completed(list(running)))
        trial = running.pop(future)
        try:
            result = future.result()
        except Exception as error:  # The task itself broke (a worker died): the trial failed, the study goes on.
            result = TrialResult(trial.number, "failed", None, 0, "", f"{type(error).__name__}: {error}")
        tune.tell(study, trial, result.state, result.value)
        if result.state == "complete":
            logger.info("trial %d complete: %s %.4g", result.number, tune.objective_name(params.tune), result.value)
        else:  # a failed trial's reason is in its own log, its MLflow run and the study's table
            logger.info("trial %d %s%s", result.number, result.state, f": {result.note}" * (result.state == "pruned"))
        results.append(result)
    return results


def task_runner(params: Params) -> Any:
    """Threads in this process (`parallelism` at a time), or an existing Dask cluster (tune.dask_address)."""
    tune = params.tune
    if tune.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=tune.dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=tune.parallelism)


def best_params(params_path: str, changes: dict[str, Any] | None, best: dict[str, Any]) -> Params:
    """The params file with the run's overrides and the best trial's values: what the winner is retrained with."""
    return load_params(params_path, {**(changes or {}), **best})


@flow(name="tuning-pipeline")
def tuning_pipeline(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    n_trials: int | None = None,
    workdir: str | None = None,
    cache_data: bool = True,
) -> StudyResult:
    """Run the study in params.yaml's `tune` section, then train, evaluate and register its best configuration.

    Args:
        params_path: the params file; its folder is the project root (mlflow.db, optuna.db, the data cache).
        overrides: params to change for this study, dotted (`{"tune.n_trials": 10}`) or nested.
        n_trials: shorthand for `tune.n_trials` (a finished study runs more trials when it grows).
        workdir: where the best model's files and reports go (default: the project root).
        cache_data: reuse ingest and preprocess outputs whose inputs have not changed.
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    quiet_defaults()
    attach_to_prefect_logging()
    from kerasflow import notes, tracking
    from tasks import tune

    changes = {**(overrides or {}), **({"tune.n_trials": n_trials} if n_trials else {})}
    params = load_params(params_path, changes or None)
    check_search_space(params)
    tag_flow_run(params)
    project_root = Path(params_path).resolve().parent
    layout = Layout(run_folder(project_root, workdir, False), schema=project_root / "data" / "schema.json")
    context = Context(layout, project_root)
    storage = tune.storage_url(params.tune, tracking.resolve_tracking_uri(params.tracking, project_root), project_root)
    opening = task(open_study, name="open-study", task_run_name="open-study", cache_policy=NO_CACHE)
    with study_lock(storage, tune.study_name(params)):
        # The data first: a metric this task does not log is refused before the study or any MLflow run exists.
        context, state, _ = run_stages(params, context, None, cache_data, names=DATA_STAGES)
        tune.check_metric(params.tune, read_task(context))
        processed = context.layout.processed_dir
        state = opening(
            params, project_root, layout.root, storage, processed, wait_for=[edge_only(state)], return_state=True
        )
        plan: StudyPlan = state.result()
        parent = plan.parent_run_id
        try:
            # A subflow, so its task runner (threads or Dask) is the study's own.
            study_trials.with_options(task_runner=task_runner(params))(plan)
            from tasks.tune_report import summarize_study

            summary = task(
                summarize_study, name="summarize-study", task_run_name="summarize-study", cache_policy=NO_CACHE
            )(params, plan)
            if summary.best is None:
                raise StudyError(
                    f"study {plan.study}: no trial completed ({summary.counts['pruned']} pruned, "
                    f"{summary.counts['failed']} failed); see the trials in MLflow run {parent}"
                )
            registration = retrain_best(params_path, changes, summary.best, plan, context, cache_data)
        except BaseException as error:
            tracking.mark_failed(parent, killed=stopped_from_outside(error))
            raise
    text = notes.study_summary(summary, registration)
    tracking.finish_run(parent, text)
    url = tracking.run_url(parent, plan.experiment_id)
    create_markdown_artifact(markdown=text, key="tuning-summary", description="kerasflow study")
    if url:
        create_link_artifact(url, link_text="MLflow study run", key="mlflow-study-run")
    return StudyResult(summary, registration, plan.experiment_id, plan.tracking_uri, url)


def read_task(context: Context) -> str:
    """classification or regression: what preprocess found the target to be."""
    from tasks.preprocess import read_state

    return read_state(context.layout.processed_dir).task


def open_best_run(params: Params, context: Context, plan: StudyPlan, trial: int) -> str:
    """The MLflow run of the best configuration's pipeline run, nested under the study's run."""
    from kerasflow import tracking

    tags = {
        "mlflow.parentRunId": plan.parent_run_id,
        "kerasflow.kind": "best",
        "kerasflow.study": plan.study,
        "optuna.trial": str(trial),
    }
    return tracking.begin_pipeline_run(
        params, context.project_root, context.layout.root, tags=tags, run_name=f"{plan.study}-best"
    )


def retrain_best(
    params_path: str,
    changes: dict[str, Any],
    best: BestTrial,
    plan: StudyPlan,
    context: Context,
    cache_data: bool,
) -> StudyRegistration:
    """Train, evaluate and register the best configuration, as a pipeline run (once per best trial: a study
    run again with no better trial does not register the same configuration twice)."""
    from kerasflow import tracking
    from tasks import tune

    recorded = tracking.run_tags(plan.parent_run_id)
    if recorded.get(REGISTERED_TRIAL) == str(best.trial):
        logger.info("the best configuration (trial %d) is registered already; not retraining it", best.trial)
        found = StudyRegistration.from_dict(tracking.load_dict(plan.parent_run_id, "registration.json"))
        return replace(found, reused=True)
    params = best_params(params_path, changes, tune.decode(best.params))
    opening = task(open_best_run, name="open-mlflow-run", task_run_name="open-mlflow-run", cache_policy=NO_CACHE)
    state = opening(params, context, plan, best.trial, return_state=True)
    context = replace(context, run_id=state.result())
    try:
        _, _, results = run_stages(params, context, state, cache_data, names=MODEL_STAGES)
    except BaseException as error:
        tracking.mark_failed(context.run_id, killed=stopped_from_outside(error))
        raise
    registration = StudyRegistration.of(results["register"], results["evaluate"], context.run_id)
    tracking.log_dict(plan.parent_run_id, registration.to_dict(), "registration.json")
    tracking.set_tags(plan.parent_run_id, {REGISTERED_TRIAL: str(best.trial)})
    return registration
