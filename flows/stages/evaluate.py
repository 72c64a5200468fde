"""Stage evaluate: score the model and the scikit-learn baseline on the test split; write metrics and plots."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.stages import Context
from kerasflow import tracking
from kerasflow.config import Params
from kerasflow.io import atomic_path, read_json
from kerasflow.layout import Layout
from kerasflow.metrics import is_better
from kerasflow.model_interface import ModelConfig, predicted_classes
from kerasflow.records import Evaluation, PreprocessState, TrainingResult
from tasks.champion import rescore_current
from tasks.evaluate import (
    baseline_metrics,
    baseline_sample,
    fixed_threshold,
    per_class_metrics,
    plot_binary_curves,
    plot_confusion_matrix,
    plot_training_curves,
    predictions_frame,
    primary_metric,
    reference_metrics,
    score_predictions,
)
from tasks.model import load_model_file
from tasks.preprocess import ParquetSplit, read_state, split_path, split_source
from tasks.train import make_dataset, predict

logger = logging.getLogger(__name__)

# Rows of the predictions file written at a time.
PREDICTION_ROWS = 100_000


def run(params: Params, context: Context) -> dict[str, Any]:
    layout = context.layout
    trained = TrainingResult.read(layout.run_file)
    state = read_state(layout.processed_dir)
    config = ModelConfig.from_dict(read_json(layout.model_config))
    train_split = split_source(layout.processed_dir, "train", state)
    test_split = split_source(layout.processed_dir, "test", state)
    model = load_model_file(layout.model_file, compile=True)
    # The test rows stream through the model; their labels and the model's outputs are kept (one value or one
    # per class a row), for the metrics, the plots and ROC AUC.
    outputs, y_test = predict(model, test_split, state.inputs), test_split.labels()
    test_loss = model.evaluate(make_dataset(test_split, state.inputs, 256), verbose=0, return_dict=True)["loss"]
    result = score(params, state, config, train_split, test_split, (y_test, outputs), test_loss)
    per_class = per_class_metrics(y_test, outputs, state.classes, config.threshold) if state.classes else {}
    pictures = draw_plots(layout, params, state, config, y_test, outputs, trained.best_epoch)
    experiment_id = tracking.configure(params.tracking, context.project_root)
    # The gate compares the candidate with the champion on the same rows: this run's test split.
    champion = rescore_current(params.register_.model_name, test_split, state, params.evaluate.batch_rows)
    result = replace(
        result,
        epochs_trained=trained.epochs_trained,
        best_epoch=trained.best_epoch,
        champion_rescored=champion,
    )
    with tracking.open_run(experiment_id, run_id=trained.run_id) as run_id:
        record(layout, state, config, result, per_class, pictures, trained.model_id)
        # The metrics file is written last: it is what register (and dvc metrics) read.
        result.write(layout.metrics)
        tracking.log_files(layout.metrics)
        tracking.describe_run(run_id)
    versus = champion.summary(result.primary_metric) if champion else "no champion yet"
    reference = result.reference or {}
    logger.info(
        "test %s %.4f (baseline %s %.4f%s) on %d rows; %s",
        result.primary_metric,
        result.score,
        result.baseline["name"],
        result.baseline[result.primary_metric],
        f", reference {reference['name']} {reference[result.primary_metric]:.4f}" if reference else "",
        result.test_rows,
        versus,
    )
    return result.to_dict()


def score(
    params: Params,
    state: PreprocessState,
    config: ModelConfig,
    train_split: ParquetSplit,
    test_split: ParquetSplit,
    scored: tuple[np.ndarray, np.ndarray],
    test_loss: float,
) -> Evaluation:
    """The model's and the baseline's test metrics, and whether the model beats the baseline."""
    y_test, outputs = scored
    scores = score_predictions(state.task, y_test, outputs, state.n_classes, config.threshold)
    # Fitted on all training rows, or a seeded sample of evaluate.baseline_rows of them.
    sample = baseline_sample(
        train_split, params.evaluate.baseline_rows, params.seed, state.inputs, params.evaluate.batch_rows
    )
    # The baseline and the reference call a row positive from the threshold params.yaml sets (0.5 when train chose
    # the model's own on the validation split: theirs are not tuned).
    others = fixed_threshold(params.model.decision_threshold)
    baseline_name, baseline = baseline_metrics(
        params.evaluate,
        state.task,
        sample,
        test_split,
        state.n_classes,
        params.seed,
        state.inputs,
        others,
    )
    reference = None
    if params.evaluate.reference:
        found = reference_metrics(
            state.task,
            sample,
            test_split,
            state.n_classes,
            params.seed,
            state.inputs,
            state.fitted,
            others,
            params.evaluate.batch_rows,
        )
        reference = {"name": found[0], **found[1]} if found else None
    primary = primary_metric(params.evaluate, state.task)
    if primary not in scores:
        raise ValueError(
            f"evaluate.primary_metric {primary!r} is not a {state.task} metric; choose from {sorted(scores)}"
        )
    return Evaluation(
        task=state.task,
        primary_metric=primary,
        test={**scores, "loss": float(test_loss)},
        baseline={"name": baseline_name, **baseline},
        baseline_rows=len(sample),
        beats_baseline=is_better(primary, scores[primary], baseline[primary]),
        test_rows=len(y_test),
        decision_threshold=config.threshold if state.n_classes == 2 else None,
        reference=reference,
    )


def record(
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
    finals.update({f"baseline_{name}": value for name, value in result.baseline.items() if name != "name"})
    finals.update({f"reference_{name}": value for name, value in (result.reference or {}).items() if name != "name"})
    tracking.log_param("evaluate.baseline_rows_used", result.baseline_rows)
    for label, scores in per_class.items():
        # A section of their own in the MLflow UI's charts: per_class/f1_3, per_class/precision_3, ...
        finals.update(
            {tracking.metric_key(f"per_class/{name}_{label}"): scores[name] for name in ("precision", "recall", "f1")}
        )
    tracking.log_model_metrics(finals, model_id, dataset=test)
    tracking.tag({"baseline.model": result.baseline["name"], "evaluate.primary_metric": result.primary_metric})
    if result.reference:
        tracking.tag({"reference.model": result.reference["name"]})
    if per_class:
        table = pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").reset_index()
        tracking.log_table(table, "per_class_scores.json")
    tracking.log_files(*pictures, layout.history, folder="plots")


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
    plot_training_curves(pd.read_csv(layout.history), pictures[0], best_epoch, title=f"{name}: training curves")
    if state.task == "classification":
        pictures.append(layout.plots_dir / "confusion_matrix.png")
        plot_confusion_matrix(y_test, predicted_classes(outputs, config.threshold), state.classes, pictures[-1])
    if state.n_classes == 2:
        pictures += [layout.plots_dir / "roc_curve.png", layout.plots_dir / "precision_recall_curve.png"]
        plot_binary_curves(y_test, outputs, config.threshold, pictures[-2], pictures[-1])
    return pictures
