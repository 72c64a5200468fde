"""Stage evaluate: score the model and the scikit-learn baseline on the test split; write metrics and plots."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from flows.stages import Context
from kerasflow import tracking
from kerasflow.config import Params
from kerasflow.errors import ConfigError
from kerasflow.io import atomic_path, read_json
from kerasflow.layout import Layout
from kerasflow.metrics import is_better
from kerasflow.model_interface import ModelConfig, predicted_classes
from kerasflow.records import Comparison, Evaluation, PreprocessState, SliceScore, TrainingResult
from kerasflow.tables import open_parquet
from tasks.champion import Rescored, rescore_current
from tasks.evaluate import (
    baseline_metrics,
    baseline_sample,
    fixed_threshold,
    load_test_outputs,
    per_class_metrics,
    plot_binary_curves,
    plot_confusion_matrix,
    plot_slices,
    plot_training_curves,
    predictions_frame,
    primary_metric,
    reference_metrics,
    score_predictions,
)
from tasks.evidence import Evidence, Scored, slice_labels
from tasks.preprocess import ParquetSplit, Split, pooled, read_state, split_path, split_source

logger = logging.getLogger(__name__)

# Rows of the predictions file written at a time.
PREDICTION_ROWS = 100_000


def run(params: Params, context: Context) -> Evaluation:
    layout = context.layout
    trained = TrainingResult.read(layout.run_file)
    state = read_state(layout.processed_dir)
    config = ModelConfig.from_dict(read_json(layout.model_config))
    train_split: Split | ParquetSplit = split_source(layout.processed_dir, "train", state)
    if params.train.cross_fit:
        # The model learnt from the training and validation rows pooled: the baseline and the reference do too.
        train_split = pooled(train_split, split_source(layout.processed_dir, "val", state))
    test_split = split_source(layout.processed_dir, "test", state)
    # The model's outputs on the test rows (one value or one per class a row), which train scored, and their
    # labels: for the metrics, the plots and ROC AUC.
    y_test = test_split.labels()
    outputs, test_loss = load_test_outputs(layout.test_outputs, len(y_test))
    result, others = score(params, state, config, train_split, test_split, (y_test, outputs), test_loss)
    per_class = per_class_metrics(y_test, outputs, state.classes, config.threshold) if state.classes else {}
    pictures = draw_plots(layout, params, state, config, y_test, outputs, trained.best_epoch)
    experiment_id = tracking.configure(params.tracking, context.project_root)
    # The gate compares the candidate with the champion on the same rows: this run's test split.
    champion = rescore_current(
        params.register_.model_name, test_split, state, params.evaluate.batch_rows, champion_cache(context)
    )
    result = replace(result, epochs_trained=trained.epochs_trained, best_epoch=trained.best_epoch)
    # How sure each comparison is, and the slices: every model scored on the same resamples of these rows.
    candidate = Scored("the candidate", outputs, config.threshold)
    labels = slice_columns(params, state, test_split)
    result = weigh(params, result, state.n_classes, (y_test, candidate), others, champion, labels)
    pictures.append(layout.plots_dir / "slices.png")
    plot_slices(result.slices, result.primary_metric, pictures[-1])
    write_slices(result.slices, layout.plots_dir / "slices.csv")
    with tracking.open_run(experiment_id, run_id=trained.run_id) as run_id:
        record(run_id, layout, state, config, result, per_class, pictures, trained.model_id)
        # The metrics file is written last: it is what register (and dvc metrics) read.
        result.write(layout.metrics)
        tracking.log_files(run_id, layout.metrics)
        tracking.describe_run(run_id)
    champion_score = result.champion_rescored
    versus = champion_score.summary(result.primary_metric) if champion_score else "no champion yet"
    reference = result.reference or {}
    logger.info(
        "test %s %.4f (baseline %s %.4f%s) on %d rows; %s",
        result.primary_metric,
        result.score,
        result.baseline_name,
        result.baseline[result.primary_metric],
        f", reference {result.reference_name} {reference[result.primary_metric]:.4f}" if reference else "",
        result.test_rows,
        versus,
    )
    for found in [*result.comparisons.values(), *([champion_score.comparison] if champion_score else [])]:
        if found is not None:
            logger.info("the candidate %s", found.sentence())
    return result


def champion_cache(context: Context) -> Path:
    """Where a champion's outputs on a test split are kept between runs (`tasks.champion.rescore_outputs`)."""
    return context.project_root / ".kerasflow" / "cache" / "champion"


def weigh(
    params: Params,
    result: Evaluation,
    n_classes: int,
    scored: tuple[np.ndarray, Scored],
    others: dict[str, Scored],
    champion: Rescored | None,
    labels: dict[str, np.ndarray],
) -> Evaluation:
    """The evaluation with its evidence: the primary metric's interval, the candidate against the baseline, the
    reference and the champion on the same bootstrap resamples, and the slices."""
    y_test, candidate = scored
    rows = Evidence.draw(y_test, result.primary_metric, result.task, n_classes, params.seed, params.evaluate.resamples)
    _, low, high = rows.interval(candidate)
    comparisons = {name: rows.comparison(candidate, other) for name, other in others.items()}
    champion_score, champion_model = None, None
    if champion is not None:
        champion_score = champion.score
        if champion.outputs is not None:
            champion_model = Scored(
                f"the champion (version {champion.score.version})", champion.outputs, champion.threshold
            )
            champion_score = replace(champion_score, comparison=rows.comparison(candidate, champion_model))
    slices = rows.slices(candidate, labels, others.get("baseline"), champion_model)
    return replace(
        result,
        interval=[low, high],
        comparisons=comparisons,
        champion_rescored=champion_score,
        slices=slices,
    )


def against_new_champion(
    params: Params, layout: Layout, state: PreprocessState, evaluation: Evaluation, champion: Rescored
) -> Evaluation:
    """The evaluation with a champion that changed since evaluate ran (register's re-score): the candidate's test
    outputs (train's) are weighed against it on the same resamples and slices."""
    if champion.outputs is None:
        return evaluation.with_champion(champion.score)
    test_split = split_source(layout.processed_dir, "test", state)
    config = ModelConfig.from_dict(read_json(layout.model_config))
    y_test = test_split.labels()
    outputs, _ = load_test_outputs(layout.test_outputs, len(y_test))
    candidate = Scored("the candidate", outputs, config.threshold)
    version = champion.score.version
    rival = Scored(f"the champion (version {version})", champion.outputs, champion.threshold)
    rows = Evidence.draw(
        y_test, evaluation.primary_metric, evaluation.task, state.n_classes, params.seed, params.evaluate.resamples
    )
    found = rows.comparison(candidate, rival)
    slices = rows.slices(candidate, slice_columns(params, state, test_split), champion=rival)
    merged = [replace(old, champion=new.champion) for old, new in zip(evaluation.slices, slices, strict=False)]
    return replace(evaluation, champion_rescored=replace(champion.score, comparison=found), slices=merged)


def slice_columns(params: Params, state: PreprocessState, test_split: ParquetSplit) -> dict[str, np.ndarray]:
    """Each test row's slice of each column in evaluate.slices (`tasks.evidence.slice_labels`)."""
    if not params.evaluate.slices:
        return {}
    kinds = {entry.column: entry.kind for entry in state.inputs.columns}
    unknown = [column for column in params.evaluate.slices if kinds.get(column) not in ("numeric", "categorical")]
    if unknown:
        raise ConfigError(
            f"evaluate.slices names {unknown}: slices are cut from the model's numeric or categorical input columns "
            f"({sorted(column for column, kind in kinds.items() if kind in ('numeric', 'categorical'))})"
        )
    frame = open_parquet(test_split.path).read(columns=list(params.evaluate.slices)).to_pandas()
    return {
        column: slice_labels(frame[column], kinds[column], params.evaluate.slice_levels, params.evaluate.slice_bins)
        for column in params.evaluate.slices
    }


def write_slices(slices: list[SliceScore], path: Path) -> None:
    """The slice table as DVC plot data (one row a slice)."""
    rows = [{"slice": entry.key, **entry.to_dict()} for entry in slices]
    with atomic_path(path) as temporary:
        pd.DataFrame(rows).to_csv(temporary, index=False)


def score(
    params: Params,
    state: PreprocessState,
    config: ModelConfig,
    train_split: Split | ParquetSplit,
    test_split: ParquetSplit,
    scored: tuple[np.ndarray, np.ndarray],
    test_loss: float,
) -> tuple[Evaluation, dict[str, Scored]]:
    """The model's and the baseline's (and the reference's) test metrics, whether the model beats the baseline, and
    the baseline's and the reference's outputs on the test rows."""
    y_test, outputs = scored
    scores = score_predictions(state.task, y_test, outputs, state.n_classes, config.threshold)
    # Fitted on all training rows, or a seeded sample of evaluate.baseline_rows of them.
    sample = baseline_sample(
        train_split, params.evaluate.baseline_rows, params.seed, state.inputs, params.evaluate.batch_rows
    )
    # The baseline and the reference call a row positive from the threshold params.yaml sets (0.5 when train chose
    # the model's own on the validation split: theirs are not tuned).
    others_threshold = fixed_threshold(params.model.decision_threshold)
    baseline_name, baseline, baseline_out = baseline_metrics(
        params.evaluate,
        state.task,
        sample,
        test_split,
        state.n_classes,
        params.seed,
        state.inputs,
        others_threshold,
    )
    reference, reference_name = None, None
    others = {"baseline": Scored(f"the baseline ({baseline_name})", baseline_out, others_threshold)}
    if params.evaluate.reference:
        found = reference_metrics(
            state.task,
            sample,
            test_split,
            state.n_classes,
            params.seed,
            state.inputs,
            state.fitted,
            others_threshold,
            params.evaluate.batch_rows,
        )
        if found:
            reference_name, reference = found[0], found[1]
            others["reference"] = Scored(f"the reference ({found[0]})", found[2], others_threshold)
    primary = primary_metric(params.evaluate, state.task)
    if primary not in scores:
        raise ValueError(
            f"evaluate.primary_metric {primary!r} is not a {state.task} metric; choose from {sorted(scores)}"
        )
    evaluation = Evaluation(
        task=state.task,
        primary_metric=primary,
        test={**scores, "loss": float(test_loss)},
        baseline=dict(baseline),
        baseline_rows=len(sample),
        beats_baseline=is_better(primary, scores[primary], baseline[primary]),
        test_rows=len(y_test),
        decision_threshold=config.threshold if state.n_classes == 2 else None,
        reference=reference,
        baseline_name=baseline_name,
        reference_name=reference_name,
    )
    return evaluation, others


def record(
    run_id: str,
    layout: Layout,
    state: PreprocessState,
    config: ModelConfig,
    result: Evaluation,
    per_class: dict[str, dict[str, float]],
    pictures: list[Path],
    model_id: str,
) -> None:
    """Final metrics (linked to the logged model and to the test split as a dataset), per-class scores, plots."""
    test = tracking.log_split(
        split_path(layout.processed_dir, "test"),
        "test",
        result.test_rows,
        tracking.input_schema(config),
        "testing",
    )
    finals = {f"test_{name}": value for name, value in result.test.items()}
    finals.update({f"baseline_{name}": value for name, value in result.baseline.items()})
    finals.update({f"reference_{name}": value for name, value in (result.reference or {}).items()})
    tracking.log_params(run_id, {"evaluate.baseline_rows_used": result.baseline_rows})
    for label, scores in per_class.items():
        # A section of their own in the MLflow UI's charts: per_class/f1_3, per_class/precision_3, ...
        finals.update(
            {tracking.metric_key(f"per_class/{name}_{label}"): scores[name] for name in ("precision", "recall", "f1")}
        )
    finals.update(evidence_metrics(result))
    tracking.log_model_metrics(finals, model_id, dataset=test)
    tracking.set_tags(
        run_id, {"baseline.model": result.baseline_name, "evaluate.primary_metric": result.primary_metric}
    )
    if result.reference:
        tracking.set_tags(run_id, {"reference.model": result.reference_name})
    # Each comparison in words on the run: `compare.baseline`, `compare.champion`.
    tracking.set_tags(run_id, {f"compare.{name}": found.sentence() for name, found in comparisons_of(result).items()})
    if result.slices:
        table = pd.DataFrame([entry.to_dict() for entry in result.slices]).round(4)
        tracking.log_table(run_id, table, "slices.json")
    if per_class:
        table = pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").reset_index()
        tracking.log_table(run_id, table, "per_class_scores.json")
    tracking.log_files(run_id, *pictures, layout.history, folder="plots")


def comparisons_of(result: Evaluation) -> dict[str, Comparison]:
    """The candidate's comparisons by name: `baseline`, `reference`, `champion` (those measured)."""
    found = dict(result.comparisons)
    if result.champion_rescored and result.champion_rescored.comparison:
        found["champion"] = result.champion_rescored.comparison
    return found


def evidence_metrics(result: Evaluation) -> dict[str, float]:
    """The interval and the comparisons as run metrics: `test_accuracy_low`/`_high`, and per model compared
    `compare/champion_difference`, `_low`, `_high`, `_p_better`; each slice's `slice/<column>=<value>`."""
    found: dict[str, float] = {}
    low, high = result.interval or (None, None)
    if low is not None and high is not None:
        found |= {f"test_{result.primary_metric}_low": low, f"test_{result.primary_metric}_high": high}
    for name, entry in comparisons_of(result).items():
        values = {"difference": entry.difference, "low": entry.low, "high": entry.high, "p_better": entry.p_better}
        found |= {f"compare/{name}_{key}": value for key, value in values.items() if value is not None}
    for entry in result.slices[1:]:
        if entry.candidate is not None:
            found[tracking.metric_key(f"slice/{entry.key}")] = entry.candidate
    return found


def draw_plots(
    layout: Layout,
    params: Params,
    state: PreprocessState,
    config: ModelConfig,
    y_test: np.ndarray,
    outputs: np.ndarray,
    best_epoch: int | None,
) -> list[Path]:
    """The test predictions (DVC's plot data, written in batches), training curves (the kept epoch marked), the
    normalised confusion matrix, and for two classes ROC and precision-recall curves."""
    layout.plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(layout.predictions) as temporary:
        for start in range(0, len(y_test), PREDICTION_ROWS):
            rows = slice(start, start + PREDICTION_ROWS)
            frame = predictions_frame(state.task, y_test[rows], outputs[rows], state.classes, config.threshold)
            frame.to_csv(temporary, mode="a" if start else "w", header=not start, index=False)
        if not len(y_test):
            predictions_frame(state.task, y_test, outputs, state.classes).to_csv(temporary, index=False)
    name = params.register_.model_name
    pictures = [layout.plots_dir / "training_curves.png"]
    validation = "validation, out of fold" if params.train.cross_fit else "validation"
    curves = pd.read_csv(layout.history)
    plot_training_curves(curves, pictures[0], best_epoch, title=f"{name}: training curves", validation=validation)
    if state.task == "classification":
        pictures.append(layout.plots_dir / "confusion_matrix.png")
        plot_confusion_matrix(y_test, predicted_classes(outputs, config.threshold), state.classes, pictures[-1])
    if state.n_classes == 2:
        pictures += [layout.plots_dir / "roc_curve.png", layout.plots_dir / "precision_recall_curve.png"]
        plot_binary_curves(y_test, outputs, config.threshold, pictures[-2], pictures[-1])
    return pictures
