"""What a reviewer reads: the markdown kerasflow writes into MLflow and Prefect.

Each function turns a run's record (tags, metrics, the gate's decision) into text; the stages
and the flow decide where it goes (`mlflow.note.content`, a model version's description, the
Prefect summary artifact). Nothing here talks to a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kerasflow.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
from kerasflow.records import (
    Evaluation,
    PipelineResult,
    PreprocessState,
    SliceScore,
    StudyRegistration,
    StudySummary,
    TrainingResult,
)

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


# After each table cell: the MLflow UI (3.17) draws markdown tables with no cell padding, so "0.9861 0.9749" would
# run together; an em space (not collapsed as spaces are) keeps the columns apart there, in Prefect and on GitHub.
CELL_GAP = "&emsp;"


def padded(table: str) -> str:
    """A markdown table with CELL_GAP after the text of every cell (the rule line left as it is)."""
    lines = []
    for line in table.split("\n"):
        if line.startswith("|---") or not line.startswith("|"):
            lines.append(line)
            continue
        cells = line.strip().strip("|").split("|")
        lines.append("|" + "|".join(f" {cell.strip()}{CELL_GAP} " for cell in cells) + "|")
    return "\n".join(lines)


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
    """A registered version's description when nothing more is known than the run and the evaluation: the
    model card without the data and training sections (`model_card` is what register writes)."""
    return model_card(CardFacts(model_name, version, run, evaluation, decision, inputs))


@dataclass(frozen=True)
class CardFacts:
    """What a model card is written from: the typed records register holds."""

    model_name: str
    version: str
    # run_id, task, source, why (the trigger's reason, if any)
    run: dict[str, Any]
    evaluation: Evaluation
    decision: dict[str, Any]
    inputs: list[str]
    state: PreprocessState | None = None
    model_summary: str = ""
    drift: dict[str, float] = field(default_factory=dict)
    min_slice_rows: int = 100
    # train.cross_fit: how many members learnt from the folds of the training and validation rows.
    cross_fit_members: int | None = None


def model_card(facts: CardFacts) -> str:
    """The version's model card (its description in the registry, and `model_card.md`): what it is for and
    was trained on, how it scored and how sure that is, where it is weak, why the gate decided as it did,
    how it was trained, its known limits, and how to load and serve it."""
    evaluation, decision, state = facts.evaluation, facts.decision, facts.state
    name, version, run = facts.model_name, facts.version, facts.run
    primary = evaluation.primary_metric
    lines = [
        f"# Model card: {name} version {version}",
        "",
        f"**Decision: {decision['alias']}**. A {run.get('task', 'model')} model"
        + (f" of `{state.target}`" if state else "")
        + f" trained on {run.get('source', 'its data')} in MLflow run `{run['run_id']}`.",
        "",
        *([f"**Why it was trained:** {run['why']}.", ""] if run.get("why") else []),
        "## Data",
        "",
    ]
    if state:
        splits = ", ".join(f"{split} {rows:,}" for split, rows in state.rows.items())
        lines += [
            f"- **Source:** {run.get('source', '?')}, md5 `{state.data_md5}`",
            f"- **Rows:** {splits}",
            f"- **Inputs:** {inputs_line(state)}",
        ]
        if state.classes:
            shown = ", ".join(
                f"`{label}` {count:,}" for label, count in zip(state.classes, state.class_counts or [], strict=False)
            )
            lines.append(f"- **Classes** (training rows): {shown}")
    else:
        lines.append(f"- **Inputs:** `{', '.join(facts.inputs[:12])}{' …' if len(facts.inputs) > 12 else ''}`")
    lines += ["", f"## Test results ({evaluation.test_rows:,} rows)", ""]
    lines.append(evidence_table(evaluation))
    lines.append("")
    comparisons = dict(evaluation.comparisons)
    if evaluation.champion_rescored and evaluation.champion_rescored.comparison:
        comparisons["champion"] = evaluation.champion_rescored.comparison
    for found in comparisons.values():
        lines.append(f"- The candidate {found.sentence()}.")
    if evaluation.reference:
        reference = evaluation.reference_name
        lines.append(f"- Reference: {reference} ({reference_settings(reference)}) on the same rows.")
    if len(evaluation.slices) > 1:
        lines += ["", "## Slices", "", slice_table(evaluation.slices), ""]
        weakest = weakest_slice(evaluation, facts.min_slice_rows)
        if weakest:
            lines.append(f"Weakest slice: **{weakest.key}** ({weakest.rows} rows), {primary} {weakest.candidate:.4f}.")
    lines += ["", "## Decision", "", f"**{decision['alias']}**", *(f"- {reason}" for reason in decision["reasons"])]
    lines += ["", "## Training", ""]
    if evaluation.epochs_trained is not None:
        best = f"; the weights of epoch {evaluation.best_epoch} kept" if evaluation.best_epoch is not None else ""
        lines.append(f"- {evaluation.epochs_trained} epochs{best}.")
    if facts.cross_fit_members:
        members = facts.cross_fit_members
        pooled = f"the {evaluation.baseline_rows:,} training and validation rows"
        lines.append(
            f"- Cross-fitted: {members} members, each learnt from {members - 1} of {members} folds of {pooled} and "
            "was validated on the other; the epoch kept is the best on that out-of-fold loss. The baseline and the "
            f"reference learnt from the same {evaluation.baseline_rows:,} rows."
        )
    if evaluation.decision_threshold is not None:
        lines.append(
            f"- Decision threshold {evaluation.decision_threshold:g} (rows at or above it are the second class)."
        )
    if facts.model_summary:
        lines += ["", "```", facts.model_summary.strip(), "```"]
    limits = known_limits(facts)
    if limits:
        lines += ["", "## Known limits", "", *(f"- {limit}" for limit in limits)]
    lines += [
        "",
        "## Use it",
        "",
        f'- Python: `mlflow.pyfunc.load_model("models:/{name}/{version}").predict(frame)` on raw columns; '
        "preprocessing is inside the model.",
        f"- Serve: `mlflow models serve -m models:/{name}/{version} --env-manager local`.",
        f"- Batch: `kerasflow predict --model models:/{name}/{version} --input new.csv --output scored.csv` "
        "(with a drift report).",
    ]
    return "\n".join(lines) + "\n"


def inputs_line(state: PreprocessState) -> str:
    if state.inputs.kind == "image":
        return f"images of shape {list(state.inputs.shape)}"
    kinds: dict[str, list[str]] = {}
    for entry in state.inputs.columns:
        kinds.setdefault(entry.kind, []).append(entry.column)
    return "; ".join(
        f"{len(columns)} {kind} (`{', '.join(columns[:8])}{' …' if len(columns) > 8 else ''}`)"
        for kind, columns in kinds.items()
    )


def evidence_table(evaluation: Evaluation) -> str:
    """The test metrics beside the baseline's, the reference's and the champion's; the primary metric with its
    95 % interval."""
    champion = evaluation.champion_rescored.test if evaluation.champion_rescored else None
    table = metrics_table(evaluation.test, evaluation.baseline, champion, evaluation.reference)
    low, high = evaluation.interval or (None, None)
    if low is None or high is None:
        return padded(table)
    primary = evaluation.primary_metric
    marked = []
    for row in table.split("\n"):
        if row.startswith(f"| {primary} |"):
            row = row.replace(
                f"| {evaluation.score:.4f} |", f"| **{evaluation.score:.4f}** ({low:.4f}–{high:.4f}) |", 1
            )
        marked.append(row)
    note = f"In brackets: the 95 % interval of the model's {primary} (bootstrap of the test rows)."
    return padded("\n".join(marked)) + f"\n\n{note}"


def slice_table(slices: list[SliceScore]) -> str:
    rows = ["| slice | rows | model (95 % interval) | baseline | champion |", "|---|---|---|---|---|"]
    for entry in slices:
        interval = f" ({entry.low:.4f}–{entry.high:.4f})" if entry.low is not None and entry.high is not None else ""
        rows.append(
            f"| {entry.key} | {entry.rows:,} | {fmt(entry.candidate)}{interval} | {fmt(entry.baseline)} | "
            f"{fmt(entry.champion)} |"
        )
    return padded("\n".join(rows))


def weakest_slice(evaluation: Evaluation, min_rows: int) -> SliceScore | None:
    """The slice (of at least `min_rows` rows when any has them) where the model scores worst."""
    from kerasflow.metrics import lower_is_better

    scored = [entry for entry in evaluation.slices[1:] if entry.candidate is not None]
    large = [entry for entry in scored if entry.rows >= min_rows] or scored
    if not large:
        return None
    sign = -1 if lower_is_better(evaluation.primary_metric) else 1
    return min(large, key=lambda entry: sign * entry.candidate)


def known_limits(facts: CardFacts) -> list[str]:
    evaluation, state = facts.evaluation, facts.state
    limits = []
    if evaluation.split_note:
        limits.append(f"A small test split: {evaluation.split_note}; differences of a few rows are noise.")
    if state and state.classes and state.class_counts:
        few = [str(label) for label, count in zip(state.classes, state.class_counts, strict=False) if count < 30]
        if few:
            limits.append(f"Classes with fewer than 30 training rows: {', '.join(few[:10])}.")
    small = [entry.key for entry in evaluation.slices[1:] if entry.rows < facts.min_slice_rows]
    if small:
        limits.append(
            f"Slices under {facts.min_slice_rows} test rows (reported, not gated): {', '.join(small[:8])}"
            + (" …" if len(small) > 8 else "")
        )
    if facts.drift:
        shown = ", ".join(f"{key} {value:g}" for key, value in facts.drift.items())
        limits.append(
            f"Trained on the data as it was: `kerasflow predict` flags a column as drifted past {shown} "
            "(predict.drift)."
        )
    return limits


def registered_model_description(model_name: str, task: str, source: str, inputs: list[str]) -> str:
    return (
        f"**{model_name}**: a kerasflow {task} model trained on {source}. It takes raw columns "
        f"(`{', '.join(inputs[:12])}{' …' if len(inputs) > 12 else ''}`); preprocessing is inside the model.\n\n"
        f'The current best: `mlflow.pyfunc.load_model("models:/{model_name}@champion")`. '
        "A version moves `champion` only when it meets the thresholds, beats the scikit-learn baseline and "
        "the champion (re-scored on the same test rows), and its files are those that passed the serving check; "
        "each version's description says why it did or did not.\n"
    )


def mlflow_link(training: TrainingResult) -> str:
    """How to open the MLflow run: its URL with a tracking server, the `mlflow ui` command with a local store."""
    if training.run_url:
        return f"[open the run in the MLflow UI]({training.run_url})"
    page = f"http://127.0.0.1:5000/#/experiments/{training.experiment_id}/runs/{training.run_id}"
    command = f"mlflow ui --backend-store-uri {training.tracking_uri} --port 5000"
    return f"run `{training.run_id}`: `{command}`, then open {page}"


def flow_summary(result: PipelineResult, overrides: dict[str, Any], tags: dict[str, str]) -> str:
    """The Prefect run's summary artifact: the verdict, the metrics, how it was made and where to look."""
    evaluation, registration, training = result.evaluation, result.registration, result.training
    changed = ", ".join(f"`{key}={value}`" for key, value in overrides.items()) or "none (params.yaml as it is)"
    slices = ["", "**Slices** (the primary metric per slice of the test rows):", "", slice_table(evaluation.slices)]
    lines = [
        "# kerasflow training run",
        "",
        f"**Model** `{registration.model_name}` version {registration.version} → **{registration.alias}**",
        "",
        *([f"**Why it ran:** {tags['kerasflow.trigger.reason']}", ""] if tags.get("kerasflow.trigger.reason") else []),
        evidence_table(evaluation),
        f"\nBaseline: {evaluation.baseline_name}, on the same {evaluation.test_rows} test rows.",
        *(slices if len(evaluation.slices) > 1 else []),
        "",
        "**Why:**",
        *(f"- {reason}" for reason in registration.reasons),
        "",
        f"- **Training:** {training.epochs_trained} epochs, best epoch {training.best_epoch}",
        f"- **Overrides:** {changed}",
        f"- **Code:** {code_line(tags)}",
        f"- **Data:** md5 `{tags.get('data.md5', '?')}` ({tags.get('data.source', '')})",
        f"- **MLflow:** {mlflow_link(training)}",
    ]
    return "\n".join(lines) + "\n"


def study_summary(summary: StudySummary, registration: StudyRegistration) -> str:
    """The study's account (the parent MLflow run's description, the Prefect artifact): the winner, how the trials
    ended, each trial, and what was registered."""
    counts, best = summary.counts, summary.best
    assert best is not None  # a study without a completed trial registers nothing
    values = ", ".join(f"`{key}={value}`" for key, value in best.params.items())
    lines = [
        f"# Tuning study `{summary.study}`",
        "",
        f"**Best:** trial {best.trial}, {summary.objective} {best.value:.4g} ({summary.direction}), with {values}.",
        "",
        f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed.",
        "",
        summary.table,
        "",
    ]
    if registration.reused:
        lines.append(
            f"The best configuration was registered already: `{registration.model_name}` version "
            f"{registration.version} ({registration.alias})."
        )
    else:
        lines += [
            f"Retrained with those values and registered: `{registration.model_name}` version "
            f"{registration.version} → **{registration.alias}**",
            "",
            padded(metrics_table(registration.metrics, registration.baseline)),
            "",
            "**Why:**",
            *(f"- {reason}" for reason in registration.reasons),
        ]
    lines += ["", f"Study storage: `{summary.storage}` (Optuna)."]
    return "\n".join(lines) + "\n"


def reference_settings(name: str) -> str:
    """How the reference named `name` was made (tasks.evaluate.make_reference), for the card and the terminal."""
    if name.startswith("Tfidf"):
        model = "C 4" if name == "TfidfLogisticRegression" else "ridge, alpha 1"
        return f"scikit-learn: TF-IDF of words and word pairs in 2 texts or more, sublinear counts; {model}"
    return "scikit-learn, default settings"
