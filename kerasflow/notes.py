"""What a reviewer reads: the markdown kerasflow writes into MLflow and Prefect.

Each function turns a run's record (tags, metrics, the gate's decision) into text; the stages
and the flow decide where it goes (`mlflow.note.content`, a model version's description, the
Prefect summary artifact). Nothing here talks to a server.
"""

from __future__ import annotations

from typing import Any

from kerasflow.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
from kerasflow.records import Evaluation

FINAL_METRICS = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS, "loss")


def short(commit: str | None) -> str:
    return (commit or "")[:10]


def orchestrator_line(tags: dict[str, str]) -> str:
    """Which Prefect flow run or DVC stage run made the run, as a link where there is one."""
    if "prefect.flow_run_id" in tags:
        name = tags.get("prefect.flow_run_name", tags["prefect.flow_run_id"])
        url = tags.get("prefect.flow_run_url")
        shown = f"[{name}]({url})" if url else f"`{name}` (id `{tags['prefect.flow_run_id']}`)"
        return f"Prefect flow run {shown}"
    if "dvc.stage" in tags:
        return f"`dvc repro` (run `{tags.get('mlflow.runName', '')}`, stages in separate processes)"
    return "Python (`flows.stages.run_pipeline`)"


def code_line(tags: dict[str, str]) -> str:
    commit = tags.get("mlflow.source.git.commit")
    if not commit:
        return "not in a git checkout"
    state = "with uncommitted changes" if tags.get("git.dirty") == "True" else "clean"
    return f"git `{short(commit)}` on `{tags.get('mlflow.source.git.branch', '?')}` ({state})"


def metrics_table(
    test: dict[str, float],
    baseline: dict[str, float],
    champion: dict[str, float] | None = None,
    reference: dict[str, Any] | None = None,
) -> str:
    """Test metrics beside the baseline's (and the reference's, and the champion's re-scored on the same rows)."""
    names = [name for name in FINAL_METRICS if name in test]
    header = "| metric | model | baseline |" + (" reference |" if reference else "")
    header += " champion (same rows) |" if champion else ""
    rule = "|---|---|---|" + ("---|" if reference else "") + ("---|" if champion else "")
    rows = []
    for name in names:
        row = f"| {name} | {test[name]:.4f} | {fmt(baseline.get(name))} |"
        if reference:
            row += f" {fmt(reference.get(name))} |"
        if champion:
            row += f" {fmt(champion.get(name))} |"
        rows.append(row)
    return "\n".join([header, rule, *rows])


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def run_description(
    tags: dict[str, str],
    metrics: dict[str, float],
    decision: dict[str, Any] | None = None,
) -> str:
    """The run's description (`mlflow.note.content`): what ran, on which data and code, and what came of it."""
    model = tags.get("registry.model", "model")
    lines = [f"### {model} · {tags.get('data.source', 'data')}", ""]
    lines.append(f"- **Made by:** {orchestrator_line(tags)}")
    if tags.get("kerasflow.trigger.reason"):
        lines.append(f"- **Why it ran:** {tags['kerasflow.trigger.reason']}")
    if "data.md5" in tags:
        rows = tags.get("data.rows", "")
        rows_text = f"; {rows}" if rows else ""
        lines.append(
            f"- **Data:** `data/raw/dataset.parquet`, md5 `{tags['data.md5']}` (the hash DVC records){rows_text}"
        )
    lines.append(f"- **Code:** {code_line(tags)}")
    if "epochs_trained" in metrics:
        best = metrics.get("best_epoch")
        restored = " (its weights restored)" if tags.get("train.restored_best") == "True" else ""
        best_text = f", best epoch {int(best)}{restored}" if best is not None else ""
        where = tags.get("train.device", "?")
        if tags.get("train.workers"):
            where += (
                f", across {tags['train.workers']} workers (MultiWorkerMirroredStrategy, "
                f"{tags.get('train.per_replica_batch', '?')} rows per replica and step)"
            )
        lines.append(f"- **Training:** {int(metrics['epochs_trained'])} epochs{best_text}, on {where}")
    primary = tags.get("evaluate.primary_metric")
    if primary and f"test_{primary}" in metrics:
        baseline = metrics.get(f"baseline_{primary}")
        baseline_text = f" (baseline {tags.get('baseline.model', '')} {fmt(baseline)})" if baseline is not None else ""
        lines.append(f"- **Test {primary}:** {metrics[f'test_{primary}']:.4f}{baseline_text}")
    if decision:
        lines += [
            f"- **Registry:** `{decision['model_name']}` version {decision['version']} → **{decision['alias']}**",
            "",
            "**Why:**",
            *(f"- {reason}" for reason in decision["reasons"]),
        ]
    return "\n".join(lines) + "\n"


def version_description(
    model_name: str,
    version: str,
    run: dict[str, Any],
    evaluation: Evaluation,
    decision: dict[str, Any],
    inputs: list[str],
) -> str:
    """A registered version's description: what it is, how to load it, how it scored, and the gate's verdict."""
    champion = evaluation.champion_rescored.test if evaluation.champion_rescored else None
    lines = [
        f"**{model_name}** version {version}: {run.get('task', 'a model')} on {run.get('source', 'its data')}, "
        f"trained in MLflow run `{run['run_id']}`.",
        "",
        f'Load it: `mlflow.pyfunc.load_model("models:/{model_name}/{version}")`; it takes raw columns '
        f"`{', '.join(inputs[:12])}{' …' if len(inputs) > 12 else ''}` and returns predictions.",
        "",
        *([f"**Why it was trained:** {run['why']}.", ""] if run.get("why") else []),
        f"Test split, {evaluation.test_rows} rows:",
        "",
        metrics_table(evaluation.test, evaluation.baseline, champion, evaluation.reference),
        "",
        *(
            [f"Reference: {evaluation.reference['name']} (scikit-learn, default settings) on the same rows.", ""]
            if evaluation.reference
            else []
        ),
        f"**Decision: {decision['alias']}**",
        *(f"- {reason}" for reason in decision["reasons"]),
    ]
    return "\n".join(lines) + "\n"


def registered_model_description(model_name: str, task: str, source: str, inputs: list[str]) -> str:
    return (
        f"**{model_name}**: a kerasflow {task} model trained on {source}. It takes raw columns "
        f"(`{', '.join(inputs[:12])}{' …' if len(inputs) > 12 else ''}`); preprocessing is inside the model.\n\n"
        f'The current best: `mlflow.pyfunc.load_model("models:/{model_name}@champion")`. '
        "A version moves `champion` only when it meets the thresholds, beats the scikit-learn baseline and "
        "the champion (re-scored on the same test rows), and its files are those that passed the serving check; "
        "each version's description says why it did or did not.\n"
    )


def mlflow_link(training: dict[str, Any]) -> str:
    """How to open the MLflow run: its URL with a tracking server, the `mlflow ui` command with a local store."""
    if training.get("run_url"):
        return f"[open the run in the MLflow UI]({training['run_url']})"
    store = training.get("tracking_uri", "sqlite:///mlflow.db")
    page = f"http://127.0.0.1:5000/#/experiments/{training.get('experiment_id', '')}/runs/{training['run_id']}"
    return f"run `{training['run_id']}`: `mlflow ui --backend-store-uri {store} --port 5000`, then open {page}"


def flow_summary(results: dict[str, dict[str, Any]], overrides: dict[str, Any], tags: dict[str, str]) -> str:
    """The Prefect run's summary artifact: the verdict, the metrics, how it was made and where to look."""
    evaluation, registration, training = results["evaluate"], results["register"], results["train"]
    changed = ", ".join(f"`{key}={value}`" for key, value in overrides.items()) or "none (params.yaml as it is)"
    lines = [
        "# kerasflow training run",
        "",
        f"**Model** `{registration['model_name']}` version {registration['version']} → **{registration['alias']}**",
        "",
        *([f"**Why it ran:** {tags['kerasflow.trigger.reason']}", ""] if tags.get("kerasflow.trigger.reason") else []),
        metrics_table(evaluation["test"], evaluation["baseline"], reference=evaluation.get("reference")),
        f"\nBaseline: {evaluation['baseline']['name']}, on the same {evaluation['test_rows']} test rows.",
        "",
        "**Why:**",
        *(f"- {reason}" for reason in registration["reasons"]),
        "",
        f"- **Training:** {training.get('epochs_trained')} epochs, best epoch {training.get('best_epoch')}",
        f"- **Overrides:** {changed}",
        f"- **Code:** {code_line(tags)}",
        f"- **Data:** md5 `{tags.get('data.md5', '?')}` ({tags.get('data.source', '')})",
        f"- **MLflow:** {mlflow_link(training)}",
    ]
    return "\n".join(lines) + "\n"


def study_summary(summary: dict[str, Any], registration: dict[str, Any]) -> str:
    """The study's account (the parent MLflow run's description, the Prefect artifact): the winner, how the trials
    ended, each trial, and what was registered."""
    counts, best = summary["counts"], summary["best"]
    objective = summary["objective"]
    values = ", ".join(f"`{key}={value}`" for key, value in best["params"].items())
    lines = [
        f"# Tuning study `{summary['study']}`",
        "",
        f"**Best:** trial {best['trial']}, {objective} {best['value']:.4g} ({summary['direction']}), with {values}.",
        "",
        f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed.",
        "",
        summary["table"],
        "",
    ]
    if registration.get("reused"):
        lines.append(
            f"The best configuration was registered already: `{registration['model_name']}` version "
            f"{registration['version']} ({registration['alias']})."
        )
    else:
        lines += [
            f"Retrained with those values and registered: `{registration['model_name']}` version "
            f"{registration['version']} → **{registration['alias']}**",
            "",
            metrics_table(registration["metrics"], registration["baseline"]),
            "",
            "**Why:**",
            *(f"- {reason}" for reason in registration["reasons"]),
        ]
    lines += ["", f"Study storage: `{summary['storage']}` (Optuna)."]
    return "\n".join(lines) + "\n"
