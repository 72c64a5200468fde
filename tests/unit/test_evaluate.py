"""Evaluation metrics at a decision threshold, the baseline on the same raw features, and plot data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.config import EvaluateParams
from kerasflow.metrics import at_least, compare, is_better
from kerasflow.model_interface import ModelInputs, predicted_classes
from tasks.evaluate import (
    baseline_metrics,
    classification_metrics,
    make_baseline,
    plot_binary_curves,
    plot_confusion_matrix,
    plot_training_curves,
    predictions_frame,
    primary_metric,
    regression_metrics,
    score_predictions,
)
from tasks.preprocess import Split
from tests.unit.helpers import digit_images, mixed_frame, prepare

PNG = b"\x89PNG\r\n\x1a\n"


def test_perfect_and_chance_multiclass_predictions():
    y = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[y]
    scores = classification_metrics(y, perfect, 3)
    assert scores == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "roc_auc": 1.0}
    uniform = np.full((6, 3), 1 / 3)
    assert classification_metrics(y, uniform, 3)["roc_auc"] == 0.5


def test_binary_probabilities():
    scores = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), 2)
    assert scores["accuracy"] == 0.5 and scores["roc_auc"] == 0.75


@pytest.mark.parametrize(
    ("threshold", "classes", "accuracy"),
    [(0.5, [0, 1, 0, 1], 0.5), (0.3, [0, 1, 1, 1], 0.75), (0.65, [0, 0, 0, 1], 0.75), (0.95, [0, 0, 0, 0], 0.5)],
)
def test_the_decision_threshold_changes_the_predicted_classes(threshold, classes, accuracy):
    y, positive = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])
    assert predicted_classes(positive.reshape(-1, 1), threshold).tolist() == classes
    scores = score_predictions("classification", y, positive, 2, threshold)
    assert scores["accuracy"] == accuracy
    assert scores["roc_auc"] == 0.75  # ranking metrics do not depend on the threshold


def test_the_threshold_does_not_apply_to_several_classes():
    outputs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    assert predicted_classes(outputs, 0.9).tolist() == predicted_classes(outputs, 0.1).tolist() == [0, 2]


def test_regression_metrics():
    scores = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [5.0]]))
    assert scores["mae"] == pytest.approx(2 / 3) and scores["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert scores["r2"] == pytest.approx(1 - 4 / 2)


@pytest.mark.parametrize(
    ("metric", "candidate", "reference", "expected"),
    [
        ("accuracy", 0.9, 0.8, 1),
        ("rmse", 0.9, 0.8, -1),
        ("mae", 0.7, 0.8, 1),
        ("r2", 0.5, 0.5, 0),
        ("val_loss", 0.2, 0.3, 1),
        ("val_accuracy", 0.2, 0.3, -1),
    ],
)
def test_direction_of_better(metric, candidate, reference, expected):
    assert compare(metric, candidate, reference) == expected
    assert is_better(metric, candidate, reference) is (expected > 0)
    assert at_least(metric, candidate, reference) is (expected >= 0)


def test_baselines_fit_the_task(tabular_frame):
    prepared = prepare(tabular_frame, "label", "classification")
    x, y, inputs = prepared.x, prepared.y, prepared.inputs
    train, test = Split(x[:40], y[:40]), Split(x[40:].reset_index(drop=True), y[40:])
    name, scores, _ = baseline_metrics(EvaluateParams(), "classification", train, test, 2, 0, inputs)
    assert name == "LogisticRegression" and scores["accuracy"] > 0.8
    target = x["a"].to_numpy() * 3
    name, scores, _ = baseline_metrics(
        EvaluateParams(), "regression", Split(x[:40], target[:40]), Split(x[40:], target[40:]), 0, 0, inputs
    )
    assert name == "Ridge" and scores["r2"] > 0.95
    with pytest.raises(ValueError, match="does not fit a regression task"):
        baseline_metrics(EvaluateParams(baseline="knn"), "regression", train, test, 0, 0, inputs)
    with pytest.raises(ValueError, match="does not fit a classification task"):
        make_baseline(EvaluateParams(baseline="ridge"), "classification", 0, inputs)


def test_the_baseline_scores_at_the_decision_threshold(tabular_frame):
    prepared = prepare(tabular_frame, "label", "classification")
    train, test = Split(prepared.x[:40], prepared.y[:40]), Split(prepared.x[40:], prepared.y[40:])
    _, default, _ = baseline_metrics(EvaluateParams(), "classification", train, test, 2, 0, prepared.inputs)
    _, strict, _ = baseline_metrics(EvaluateParams(), "classification", train, test, 2, 0, prepared.inputs, 0.999)
    assert strict["recall"] < default["recall"] and strict["roc_auc"] == default["roc_auc"]


def test_baseline_on_mixed_columns_with_missing_values():
    """Numeric with NaN, categorical with None and free text: imputed, one-hot and TF-IDF, like the model's layers."""
    frame = mixed_frame(rows=240, seed=1)
    prepared = prepare(frame, "label", "classification", text_column="note", train_rows=180)
    assert frame["size"].isna().any() and frame["color"].isna().any()
    x, y = prepared.x, prepared.y
    train, test = Split(x[:180], y[:180]), Split(x[180:].reset_index(drop=True), y[180:])
    test.x.loc[0, "color"] = "violet"  # a category the baseline never saw
    name, scores, _ = baseline_metrics(EvaluateParams(), "classification", train, test, 2, 0, prepared.inputs)
    majority = max(test.y.mean(), 1 - test.y.mean())
    assert name == "LogisticRegression" and scores["accuracy"] > majority + 0.1 and scores["roc_auc"] > 0.85
    baseline = make_baseline(EvaluateParams(), "classification", 0, prepared.inputs).fit(train.x, train.y)
    transformer = baseline[0]
    assert sorted(transformer.named_transformers_) == ["categorical_color", "numeric_size", "text_note"]
    features = transformer.transform(test.x)
    assert not np.isnan(features.toarray() if hasattr(features, "toarray") else features).any()


def test_baseline_accepts_missing_text():
    prepared = prepare(mixed_frame(rows=120), "label", "classification", text_column="note")
    x = prepared.x.copy()
    x.loc[[3, 50, 100], "note"] = None
    train, test = Split(x[:90], prepared.y[:90]), Split(x[90:], prepared.y[90:])
    _, scores, _ = baseline_metrics(EvaluateParams(), "classification", train, test, 2, 0, prepared.inputs)
    # The missing notes are read as empty text, and the words of the others still carry the label.
    assert scores["accuracy"] > max(test.y.mean(), 1 - test.y.mean()) + 0.1


def test_baseline_on_images_flattens_the_pixels():
    x, y = digit_images(rows=60)
    inputs = ModelInputs.images([8, 8, 1])
    name, scores, _ = baseline_metrics(
        EvaluateParams(baseline="knn"), "classification", Split(x[:40], y[:40]), Split(x[40:], y[40:]), 2, 0, inputs
    )
    assert name == "KNeighborsClassifier" and scores["accuracy"] > 0.9


def test_primary_metric_defaults():
    assert primary_metric(EvaluateParams(), "classification") == "accuracy"
    assert primary_metric(EvaluateParams(), "regression") == "r2"
    assert primary_metric(EvaluateParams(primary_metric="f1"), "classification") == "f1"


def test_predictions_frame_names_the_classes_at_the_threshold():
    binary = np.array([[0.2], [0.6], [0.9]])
    at_half = predictions_frame("classification", np.array([0, 1, 1]), binary, ["no", "yes"])
    at_seventy = predictions_frame("classification", np.array([0, 1, 1]), binary, ["no", "yes"], threshold=0.7)
    assert at_half["predicted"].tolist() == ["no", "yes", "yes"]
    assert at_seventy["predicted"].tolist() == ["no", "no", "yes"]
    regression = predictions_frame("regression", np.array([1.0, 2.0]), np.array([[1.5], [2.5]]), None)
    assert regression.to_dict("list") == {"actual": [1.0, 2.0], "predicted": [1.5, 2.5]}


def test_plots_are_written(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [0, 1],
            "loss": [1.0, 0.5],
            "val_loss": [1.1, 0.7],
            "accuracy": [0.5, 0.8],
            "val_accuracy": [0.4, 0.7],
        }
    )
    plot_training_curves(history, tmp_path / "curves.png")
    frame = predictions_frame(
        "classification", np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), ["cat", "dog"]
    )
    assert frame.to_dict("list") == {"actual": ["cat", "dog", "dog"], "predicted": ["cat", "dog", "cat"]}
    plot_confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), ["cat", "dog"], tmp_path / "confusion.png")
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_the_start_of_from_start_is_a_line_on_the_validation_loss_not_a_panel_of_its_own(tmp_path, monkeypatch):
    import matplotlib.axes

    lines = []
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda axis, y, **options: lines.append((y, options)))
    history = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "start_val_loss": [0.9, 0.9]})
    plot_training_curves(history, tmp_path / "curves.png", best_epoch=0)
    assert [(y, options["label"]) for y, options in lines] == [(0.9, "validation, at the start")]  # one panel: loss
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("threshold", [0.5, 0.99])
def test_binary_curves_are_written(tmp_path, threshold):
    y = np.array([0, 0, 1, 1, 0, 1])
    outputs = np.array([[0.1], [0.4], [0.35], [0.8], [0.2], [0.9]])
    plot_binary_curves(y, outputs, threshold, tmp_path / "roc.png", tmp_path / "pr.png")
    assert (tmp_path / "roc.png").read_bytes()[:8] == PNG and (tmp_path / "pr.png").read_bytes()[:8] == PNG
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pr.png", "roc.png"]  # no temporaries left
