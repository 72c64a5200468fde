"""Batch prediction with the champion: `kerasflow predict`, the `batch-prediction` flow, `predict_file()`.

One function does the work (`predict_file`): load the model from the registry, stream the input
through it into the output, check the new rows for drift against the training split's statistics
the model carries, and record the scoring as a run of the experiment `<experiment>-predictions`.
The Prefect flow wraps it and shows the drift as a table artifact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task

from kerasflow.config import Params, load_params
from kerasflow.runtime import attach_to_prefect_logging, import_quietly, quiet_defaults

if TYPE_CHECKING:
    from kerasflow.records import DriftReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionResult:
    """Where the predictions went, what scored them, and the drift found."""

    output: Path
    rows: int
    seconds: float
    model_uri: str
    model_name: str
    model_version: str
    drift: DriftReport | None  # None: the model carries no training statistics
    drift_report: Path
    run_id: str

    @property
    def summary(self) -> str:
        from tasks.drift import summary_line

        return summary_line(self.drift)


def resolve_model(params: Params, model_uri: str | None) -> str:
    return model_uri or params.predict.model or f"models:/{params.register_.model_name}@champion"


def predict_file(
    input_path: str | Path,
    output_path: str | Path | None = None,
    model_uri: str | None = None,
    params_path: str | Path = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> PredictionResult:
    """Score `input_path` with the model (default: the champion) into `output_path`; check drift; record it.

    Raises InputFileError (the file cannot be read, a column is missing, a value is not a number:
    named), DriftError (drift with `predict.fail_on_drift`), or the MLflow error for a model that is
    not there (tracking.ModelNotFound). Nothing is written at `output_path` unless every row was scored.
    """
    from kerasflow import tracking
    from tasks.drift import DriftCounter, TrainingStatistics, summary_line
    from tasks.predict import DriftError, InputFileError, default_output, score_file

    params = load_params(params_path, overrides)
    project_root = Path(params_path).resolve().parent
    source = Path(input_path)
    output = Path(output_path) if output_path else default_output(source)
    if output.resolve() == source.resolve():
        raise InputFileError(f"{output}: --output is the input file; predictions would overwrite it (choose another)")
    tracking.configure(params.tracking, project_root)
    uri = resolve_model(params, model_uri)
    name, version, _ = tracking.registered_identity(uri) if uri.startswith("models:/") else (uri, "", None)
    import_quietly("keras")  # TensorFlow's native start-up lines left out of the terminal
    model = tracking.load_model(uri)
    scorer = model.unwrap_python_model()
    # Versions logged before models carried their training statistics have none: no drift check for them.
    statistics = scorer.training_statistics() if hasattr(scorer, "training_statistics") else None
    counter = DriftCounter(TrainingStatistics.from_dict(statistics), scorer.config.inputs) if statistics else None
    started = time.perf_counter()
    writer = score_file(
        source,
        output,
        scorer,
        {"model_name": name, "model_version": version},
        params.predict.batch_rows,
        counter,
        params.predict.keep_columns,
    )
    seconds = time.perf_counter() - started
    thresholds = params.predict.drift
    drift = counter.report(thresholds.psi, thresholds.unseen_share, thresholds.missing_change) if counter else None
    refused = bool(drift and drift.drifted) and params.predict.fail_on_drift
    if refused:
        writer.abort()
    else:
        writer.commit()
    report_path = output.with_name(f"{output.stem}.drift.json")
    run_id = record(params, project_root, uri, name, version, source, output, writer.rows, seconds, drift, report_path)
    summary = summary_line(drift)
    logger.info("scored %d rows with %s version %s in %.1f s; %s", writer.rows, name, version, seconds, summary)
    if version:  # a registered model: tell Prefect (automations may retrain on drift)
        announce(name, version, drift, source, writer.rows, run_id, report_path)
    if refused:
        raise DriftError(f"{source}: {summary}; predict.fail_on_drift is true, so no predictions were written")
    return PredictionResult(output, writer.rows, seconds, uri, name, version, drift, report_path, run_id)


def announce(
    name: str, version: str, drift: DriftReport | None, source: Path, rows: int, run_id: str | None, report_path: Path
) -> None:
    """`kerasflow.prediction.completed`, and `kerasflow.drift.detected` when a column drifted (no-ops without a
    Prefect API)."""
    from kerasflow import events

    drifted = bool(drift and drift.drifted)
    if drifted:
        payload = events.drift_payload(drift, str(source.resolve()), run_id, str(report_path.resolve()))
        labels = {events.PREDICTION_RUN_LABEL: run_id} if run_id else {}
        events.emit(events.DRIFT_DETECTED, name, version, payload, labels)
    events.emit(
        events.PREDICTION_COMPLETED,
        name,
        version,
        {"rows": rows, "drift_found": drifted, "scored_file": str(source.resolve()), "prediction_run_id": run_id},
    )


def record(
    params: Params,
    project_root: Path,
    uri: str,
    name: str,
    version: str,
    source: Path,
    output: Path,
    rows: int,
    seconds: float,
    drift: DriftReport | None,
    report_path: Path,
) -> str:
    """The drift report and its plot beside the output (drawn once, logged as they are), and a run in
    `<experiment>-predictions`: model, rows, time, drift."""
    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from kerasflow.io import write_json
    from tasks.drift import plot_drift, summary_line

    plot_path = report_path.with_suffix(".png")
    if drift:
        write_json(report_path, drift.to_dict())
        plot_drift(drift, plot_path, title=f"{source.name} against {name} v{version}'s training split")
    experiment = TrackingParams(experiment=f"{params.tracking.experiment}-predictions")
    experiment_id = tracking.configure(
        experiment.model_copy(update={"tracking_uri": params.tracking.tracking_uri}), project_root
    )
    run_name = f"predict-{name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracking.open_run(experiment_id, run_name=run_name) as run_id:
        tracking.tag(
            {
                **tracking.source_tags(),
                "registry.model": name,
                "registry.version": version,
                "predict.drift": summary_line(drift),
                "mlflow.note.content": f"Scored `{source}` ({rows:,} rows) with `{uri}` (version {version}) into "
                f"`{output}`.\n\n{summary_line(drift)}\n",
            }
        )
        tracking.log_params({"model_uri": uri, "input": str(source), "output": str(output)})
        metrics = {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds if seconds else 0.0}
        metrics["drifted_columns"] = len(drift.drifted) if drift else 0
        for column, entry in (drift.columns if drift else {}).items():
            # Column names may hold characters MLflow refuses in a metric name (spaces are fine, `(` or `é` not).
            if entry.psi is not None:
                metrics[tracking.metric_key(f"psi/{column}")] = entry.psi
            if entry.unseen_share is not None:
                metrics[tracking.metric_key(f"unseen_share/{column}")] = entry.unseen_share
        tracking.log_metrics(metrics)
        if drift:
            tracking.log_files(report_path, plot_path, folder="drift")
    return run_id


def drift_table(drift: DriftReport | None) -> list[dict[str, Any]]:
    """The drift report as rows for a Prefect table artifact (none for a model without training statistics)."""
    rows = []
    for column, entry in (drift.columns if drift else {}).items():
        rows.append(
            {
                "column": column,
                "kind": entry.kind,
                "psi": None if entry.psi is None else round(entry.psi, 4),
                "unseen share": None if entry.unseen_share is None else round(entry.unseen_share, 4),
                "missing (training → new)": f"{entry.missing_share_training:.1%} → {entry.missing_share_new:.1%}",
                "drifted": "yes: " + ", ".join(entry.reasons) if entry.drifted else "no",
            }
        )
    return rows


@task(name="score", task_run_name="score")
def score(input_path: str, output_path: str | None, model_uri: str | None, params_path: str) -> dict[str, Any]:
    result = predict_file(input_path, output_path, model_uri, params_path)
    return {
        "output": str(result.output),
        "rows": result.rows,
        "seconds": result.seconds,
        "model": f"{result.model_name} version {result.model_version}",
        "drift": result.drift.to_dict() if result.drift else None,
        "drift_table": drift_table(result.drift),
        "summary": result.summary,
        "run_id": result.run_id,
    }


@flow(name="batch-prediction")
def batch_prediction(
    input_path: str, output_path: str | None = None, model_uri: str | None = None, params_path: str = "params.yaml"
) -> dict[str, Any]:
    """Score a CSV, Parquet, .npy or image folder with the champion (or `model_uri`); check it for drift.

    Args:
        input_path: the rows to score (relative paths are taken from the worker's folder, the project).
        output_path: where the predictions go (.csv or .parquet; default: beside the input).
        model_uri: the model (default: `models:/<register.model_name>@champion`).
        params_path: the params file (its `predict` section, tracking store and model name).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    quiet_defaults()
    attach_to_prefect_logging()
    result = score(input_path, output_path, model_uri, params_path)
    create_table_artifact(result["drift_table"], key="drift", description=result["summary"])
    create_markdown_artifact(
        f"# Batch prediction\n\n**{result['rows']:,} rows** scored with `{result['model']}` in "
        f"{result['seconds']:.1f} s into `{result['output']}`.\n\n**{result['summary']}**\n\n"
        f"The drift report is beside the output; MLflow run `{result['run_id']}` in the predictions experiment.\n",
        key="prediction-summary",
        description=result["summary"],
    )
    return result
