"""Evaluation metrics, the baseline, and plot data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.config import EvaluateParams
from tasks.evaluate import (
    baseline_metrics,
    classification_metrics,
    is_better,
    plot_confusion_matrix,
    plot_training_curves,
    predictions_frame,
    primary_metric,
    regression_metrics,
)
from tasks.preprocess import Split


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


def test_regression_metrics():
    scores = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [5.0]]))
    assert scores["mae"] == pytest.approx(2 / 3) and scores["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert scores["r2"] == pytest.approx(1 - 4 / 2)


@pytest.mark.parametrize(
    ("metric", "candidate", "reference", "better"),
    [("accuracy", 0.9, 0.8, True), ("rmse", 0.9, 0.8, False), ("r2", 0.5, 0.5, False)],
)
def test_direction_of_better(metric, candidate, reference, better):
    assert is_better(metric, candidate, reference) is better


def test_baselines_fit_the_task(tabular_frame):
    x, y = tabular_frame[["a", "b"]].to_numpy(), tabular_frame["label"].to_numpy()
    name, scores = baseline_metrics(
        EvaluateParams(), "classification", Split(x[:40], y[:40]), Split(x[40:], y[40:]), 2, 0
    )
    assert name == "LogisticRegression" and scores["accuracy"] > 0.8
    name, scores = baseline_metrics(
        EvaluateParams(), "regression", Split(x[:40], x[:40, 0] * 3), Split(x[40:], x[40:, 0] * 3), 0, 0
    )
    assert name == "Ridge" and scores["r2"] > 0.95
    with pytest.raises(ValueError, match="does not fit a regression task"):
        baseline_metrics(EvaluateParams(baseline="knn"), "regression", Split(x, y), Split(x, y), 0, 0)


def test_primary_metric_defaults():
    assert primary_metric(EvaluateParams(), "classification") == "accuracy"
    assert primary_metric(EvaluateParams(), "regression") == "r2"
    assert primary_metric(EvaluateParams(primary_metric="f1"), "classification") == "f1"


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
    plot_confusion_matrix(frame, tmp_path / "confusion.png")
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
