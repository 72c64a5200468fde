"""The `batch-prediction` flow: `tasks.predict.predict_file` (load the model from the registry, stream the input
through it into the output, check the new rows for drift, record the scoring as a run of the experiment
`<experiment>-predictions`) as a Prefect task, with the drift as a table artifact and a summary.
`kerasflow predict` calls the same function without Prefect.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prefect import flow, task

from kerasflow.records import PredictionResult
from kerasflow.runtime import attach_to_prefect_logging, quiet_defaults

if TYPE_CHECKING:
    from kerasflow.records import DriftReport

logger = logging.getLogger(__name__)


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
def score(input_path: str, output_path: str | None, model_uri: str | None, params_path: str) -> PredictionResult:
    from tasks.predict import predict_file

    return predict_file(input_path, output_path, model_uri, params_path)


@flow(name="batch-prediction")
def batch_prediction(
    input_path: str, output_path: str | None = None, model_uri: str | None = None, params_path: str = "params.yaml"
) -> PredictionResult:
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
    create_table_artifact(drift_table(result.drift), key="drift", description=result.summary)
    create_markdown_artifact(
        f"# Batch prediction\n\n**{result.rows:,} rows** scored with `{result.model_name}` version "
        f"{result.model_version} in {result.seconds:.1f} s into `{result.output}`.\n\n**{result.summary}**\n\n"
        f"The drift report is beside the output; MLflow run `{result.run_id}` in the predictions experiment.\n",
        key="prediction-summary",
        description=result.summary,
    )
    return result
