"""The metrics kerasflow scores models with, and the one place that knows which way is better.

The gate (thresholds, baseline, champion), the evaluate report and tuning all compare through
`compare`, so "better" means the same everywhere.
"""

from __future__ import annotations

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("rmse", "mae", "r2")
# Error metrics, and losses: smaller is better.
LOWER_IS_BETTER = ("rmse", "mae", "loss")


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of `metric` are better (errors and losses, including `val_loss`)."""
    name = metric.removeprefix("val_").removeprefix("test_")
    return name in LOWER_IS_BETTER or name.endswith("loss") or name.endswith("error")


def compare(metric: str, candidate: float, reference: float) -> int:
    """+1 if `candidate` is better than `reference` in the metric's own direction, 0 if equal, -1 if worse."""
    if candidate == reference:
        return 0
    better = candidate < reference if lower_is_better(metric) else candidate > reference
    return 1 if better else -1


def is_better(metric: str, candidate: float, reference: float) -> bool:
    """Strictly better, in the metric's own direction."""
    return compare(metric, candidate, reference) > 0


def at_least(metric: str, candidate: float, reference: float) -> bool:
    """As good as `reference` or better (a threshold met, a champion matched)."""
    return compare(metric, candidate, reference) >= 0
