"""The Prefect training pipeline: ingest → validate → preprocess → train → evaluate → register.

Run it with `python -m flows.training` (or `kerasflow run`); deploy it with prefect.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.stages import Context, Stage, build_stages
from kerasflow.config import load_params
from kerasflow.layout import Layout

# Stages whose work is I/O that can fail transiently (downloads, the tracking store).
RETRIES = {"ingest": 2, "register": 2}


def as_task(stage: Stage) -> Any:
    """The Prefect task that runs one stage (the same function `dvc repro` runs)."""
    return task(
        stage.run,
        name=stage.name,
        retries=RETRIES.get(stage.name, 0),
        retry_delay_seconds=[2, 10],
        cache_policy=NO_CACHE,
    )


def summary_markdown(results: dict[str, dict[str, Any]]) -> str:
    evaluation, registration, training = results["evaluate"], results["register"], results["train"]
    rows = "\n".join(
        f"| {name} | {value:.4f} | {evaluation['baseline'].get(name, float('nan')):.4f} |"
        for name, value in evaluation["test"].items()
    )
    run = training.get("run_url") or f"run `{training['run_id']}` in {training['tracking_uri']}"
    return (
        f"# kerasflow training run\n\n"
        f"**Model** `{registration['model_name']}` version {registration['version']} → **{registration['alias']}**\n\n"
        f"| metric | model | baseline ({evaluation['baseline']['name']}) |\n|---|---|---|\n{rows}\n\n"
        f"**Decision:** {'; '.join(registration['reasons'])}\n\n**MLflow:** {run}\n"
    )


@flow(name="training-pipeline")
def training_pipeline(
    params_path: str = "params.yaml", overrides: dict[str, Any] | None = None, workdir: str | None = None
) -> dict[str, Any]:
    """Run every stage in order and return the MLflow run id, test metrics and registration decision.

    Args:
        params_path: the params file; its folder is the project root (where mlflow.db lives).
        overrides: params to change for this run, dotted (`{"train.epochs": 5}`) or nested.
        workdir: where data, models and reports go (default: the project root).
    """
    params = load_params(params_path, overrides)
    project_root = Path(params_path).resolve().parent
    context = Context(Layout(Path(workdir) if workdir else project_root), project_root)
    results = {stage.name: as_task(stage)(params, context) for stage in build_stages(context.layout)}
    create_markdown_artifact(markdown=summary_markdown(results), key="training-summary", description="kerasflow run")
    return {
        "run_id": results["train"]["run_id"],
        "metrics": results["evaluate"]["test"],
        "baseline": results["evaluate"]["baseline"],
        "registration": results["register"],
    }


def main(argv: list[str] | None = None) -> int:
    from flows.cli import main as cli_main

    return cli_main(["run", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
