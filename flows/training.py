"""The Prefect training pipeline: ingest → validate → preprocess → train → evaluate → register.

Run it with `kerasflow run`; deploy it with prefect.yaml; serve it with `kerasflow serve`.
Each stage is one task running the same function `dvc repro` runs, drawn as a chain in the
Prefect graph; the MLflow run is opened first, so a run that fails in any stage is marked
FAILED in MLflow too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ExternalSignal
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.stages import PROJECT_ROOT, Context, Stage, build_stages
from kerasflow.config import Params, load_params
from kerasflow.events import Trigger
from kerasflow.io import file_md5
from kerasflow.layout import Layout, run_folder_lock
from kerasflow.records import PipelineResult
from kerasflow.runtime import attach_to_prefect_logging, import_quietly, quiet_defaults
from kerasflow.sources import source_of

if TYPE_CHECKING:
    from flows.stages import StageRecord

# Stages whose work can fail transiently (downloads, the tracking store). A retried train resumes
# from its per-epoch backup in the same run folder.
RETRIES = {"ingest": 2, "train": 2, "register": 2}
RETRY_DELAYS = [2, 10]
# Data stages cached on their content: the layout folder each one fills.
CACHED_OUTPUTS = {"ingest": "raw_dir", "preprocess": "processed_dir"}


def is_transient(error: BaseException) -> bool:
    """Worth a retry: the network or a server, not bad input or a bug."""
    return isinstance(error, (ConnectionError, TimeoutError)) or bool(getattr(error, "transient", False))


def stopped_from_outside(error: BaseException) -> bool:
    """Ctrl-C or SIGTERM (Prefect's engine raises its TerminationSignal for the latter): the MLflow run is then
    KILLED, as MLflow names a run stopped from outside; any other failure leaves it FAILED."""
    return isinstance(error, (KeyboardInterrupt, SystemExit, ExternalSignal))


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a failed stage only when its error was transient."""
    try:
        state.result()
    except Exception as error:  # The failed state re-raises the stage's own exception here.
        return is_transient(error)
    return False


def cache_folder(stage: Stage, params: Params, context: Context) -> Path | None:
    """A folder named by the hash of everything a data stage's output depends on.

    Its params section and the seed, its code, and its input data (the raw file's md5,
    which is also the content hash DVC records for it). Same inputs, same folder: a
    rerun, a concurrent run or another run folder reuses it.
    """
    section = params.ingest if stage.name == "ingest" else params.preprocess
    parts: dict[str, Any] = {
        "stage": stage.name,
        "params": section.model_dump(mode="json"),
        "seed": params.seed,
        "code": [file_md5(PROJECT_ROOT / path) for path in stage.code],
    }
    if stage.name == "ingest" and (source := source_of(params.ingest).path(params.ingest)):
        files = sorted(path for path in source.rglob("*") if path.is_file()) if source.is_dir() else [source]
        if not source.exists() or not files:
            return None  # Nothing to key on: let ingest itself say what is wrong with the path.
        parts["source_md5"] = [(path.relative_to(source).as_posix(), file_md5(path)) for path in files]
    if stage.name == "preprocess":
        parts["raw_md5"] = json.loads(context.layout.raw_meta.read_text())["md5"]
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return context.project_root / ".kerasflow" / "cache" / f"{stage.name}-{digest}"


# What a second run in a busy run folder can do.
ISOLATE_REMEDY = "wait for it to finish, or start this one with --isolate (a folder of its own under runs/)"


def cached_raw_dir(params: Params, project_root: Path) -> Path | None:
    """The raw dataset a flow run of these params ingested into its cache (None when there is none): what
    `kerasflow accept-schema` reads after `kerasflow run`, which keeps data/raw/ empty."""
    layout = Layout(project_root)
    stage = next(stage for stage in build_stages(layout) if stage.name == "ingest")
    folder = cache_folder(stage, params, Context(layout, project_root))
    return folder if folder is not None and (folder / "dataset.json").is_file() else None


def as_task(stage: Stage, cache_key: str | None = None, refresh: bool = False) -> Any:
    """The Prefect task that runs one stage (the same function `dvc repro` runs)."""
    options: dict[str, Any] = {
        "name": stage.name,
        "task_run_name": stage.name,
        "retries": RETRIES.get(stage.name, 0),
        "retry_delay_seconds": RETRY_DELAYS,
        "retry_condition_fn": retry_if_transient,
    }
    if cache_key is None:
        return task(stage.run, cache_policy=NO_CACHE, **options)
    # A missing output folder means the cached result is stale: run again and re-record it.
    return task(stage.run, cache_key_fn=lambda *_: cache_key, persist_result=True, refresh_cache=refresh, **options)


def run_folder(project_root: Path, workdir: str | None, isolate: bool) -> Path:
    """Where this run's models and reports go: `workdir`, a folder of its own, or the project root."""
    if workdir:
        return Path(workdir)
    if isolate:
        return project_root / "runs" / (flow_run.id or "local")
    return project_root


def open_mlflow_run(params: Params, context: Context) -> str:
    """Create the MLflow run of the whole pipeline run (left RUNNING until a stage closes it)."""
    from kerasflow import tracking

    return tracking.begin_pipeline_run(params, context.project_root, context.layout.root)


def tag_flow_run(params: Params) -> None:
    """Tags to filter flow runs by in the Prefect UI: the workload (its data) and the registered model."""
    from prefect import get_client

    label = source_of(params.ingest).label(params.ingest)
    wanted = [f"workload:{params.ingest.source}:{label}", f"model:{params.register_.model_name}"]
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, tags=sorted({*current.tags, *wanted}))


def run_stages(
    params: Params,
    context: Context,
    after: Any = None,
    cache_data: bool = True,
    names: Collection[str] | None = None,
) -> tuple[Context, Any, dict[str, StageRecord]]:
    """Run the stages (all, or those in `names`) in pipeline order as Prefect tasks, the first waiting for
    the state `after` (if any).

    Returns the context with the data stages' cache folders in it, the last stage's state (for
    what comes next to wait for) and each stage's result. Each stage waits for the one before:
    Prefect draws the pipeline as a chain.
    """
    results: dict[str, StageRecord] = {}
    previous = after
    # The stage list dvc.yaml is generated from; this run's paths are in `context`, not in the list.
    for stage in build_stages(Layout(context.project_root)):
        if names is not None and stage.name not in names:
            continue
        key, refresh = None, False
        folder = cache_folder(stage, params, context) if cache_data and stage.name in CACHED_OUTPUTS else None
        if folder is not None:
            context = replace(context, layout=replace(context.layout, **{CACHED_OUTPUTS[stage.name]: folder}))
            key, refresh = folder.name, not any(folder.glob("*.json"))
        # The arguments are quoted so Prefect does not also draw an edge from the task that made them.
        stage_task = as_task(stage, key, refresh)
        waits = [edge_only(previous)] if previous is not None else None
        previous = stage_task(quote(params), quote(context), wait_for=waits, return_state=True)
        results[stage.name] = previous.result()
    return context, previous, results


class _Waited:
    """What a waited-for state carries instead of its result (one object, alive from import on)."""


WAITED = _Waited()


def edge_only(state: Any) -> Any:
    """The state to wait for without its result: Prefect walks a waited-for state's data and looks its parts up by
    `id()`, so a plain dict of the result can share the address of an earlier task's freed result and draw an edge
    from that task too (PrefectHQ/prefect#20558). The task run's id is all the edge needs; the data is a
    long-lived placeholder (no freed result ever had its address)."""
    return state.model_copy(update={"data": WAITED})


def open_run_task() -> Any:
    """The first task of a pipeline run: create its MLflow run (retried if the store is briefly unreachable)."""
    return task(
        open_mlflow_run,
        name="open-mlflow-run",
        task_run_name="open-mlflow-run",
        retries=2,
        retry_delay_seconds=RETRY_DELAYS,
        retry_condition_fn=retry_if_transient,
        cache_policy=NO_CACHE,
    )


@flow(name="training-pipeline")
def training_pipeline(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    workdir: str | None = None,
    isolate: bool = False,
    cache_data: bool = True,
    trigger: dict[str, Any] | None = None,
) -> PipelineResult:
    """Run every stage in order; return the run's record: its MLflow run, the evaluation and the registration.

    Args:
        params_path: the params file; its folder is the project root (mlflow.db, the data cache).
        overrides: params to change for this run, dotted (`{"train.epochs": 5}`) or nested.
        epochs: shorthand for `train.epochs`; `batch_size` and `learning_rate` likewise.
        workdir: where this run's models and reports go (default: the project root).
        isolate: give this run a folder of its own, `runs/<flow-run-id>/` (deployments do).
        cache_data: reuse ingest and preprocess outputs whose inputs have not changed.
        trigger: set by an automation (prefect.yaml's retrain-on-drift): the event that started this run, its
            reason and the predictions run that saw it; kept as the MLflow run's and version's tags.
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    quiet_defaults()
    attach_to_prefect_logging()
    from kerasflow import notes, tracking

    shorthands = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate}
    changes = {**(overrides or {}), **{key: value for key, value in shorthands.items() if value is not None}}
    params = load_params(params_path, changes or None)
    import_quietly("tasks.model").check_spec(params.model)  # a bad layer argument fails the run before any stage
    started_by = Trigger.from_parameter(trigger, params.register_.model_name)
    tag_flow_run(params)
    project_root = Path(params_path).resolve().parent
    layout = Layout(run_folder(project_root, workdir, isolate), schema=project_root / "data" / "schema.json")
    context = Context(layout, project_root)
    with run_folder_lock(layout.root, ISOLATE_REMEDY):
        previous = open_run_task()(params, context, return_state=True)
        context = replace(context, run_id=previous.result())
        if started_by:
            tracking.set_tags(context.run_id, started_by.tags())
            get_run_logger().info("this run was started by an automation: %s", started_by.description)
        try:
            context, _, results = run_stages(params, context, previous, cache_data)
        except BaseException as error:
            tracking.mark_failed(context.run_id, killed=stopped_from_outside(error))
            raise
    result = PipelineResult(
        run_id=context.run_id,
        workdir=str(context.layout.root),
        tracking_uri=tracking.redacted(tracking.resolve_tracking_uri(params.tracking, project_root)),
        training=results["train"],
        evaluation=results["evaluate"],
        registration=results["register"],
        min_slice_rows=params.register_.min_slice_rows,
    )
    summary = notes.flow_summary(result, changes, tracking.run_tags(context.run_id))
    create_markdown_artifact(markdown=summary, key="training-summary", description="kerasflow run")
    if result.run_url:
        create_link_artifact(result.run_url, link_text="MLflow run", key="mlflow-run")
    return result
