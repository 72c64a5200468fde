"""The gate's evidence, measured: how often each `register.min_confidence` moves the champion, and what the
bootstrap costs.

    python -m bench --only gate        # about a minute on 2 cores; writes bench/results/gate.md and .json

How often: two binary classifiers whose errors are independent, one of them at 80 % accuracy, the other as
good (a move would be noise) or 3 points better (a move is right), scored on test splits of 100, 400 and
2,000 rows; the share of 500 trials in which the candidate would take `champion` under the old rule (a better
point score) and under each confidence. What it costs: drawing the resamples and comparing two models
(accuracy and ROC AUC) on 359 rows (the default digits run's test split) and on 1,000,000 rows, plus four
slices.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tasks.evidence import Bootstrap, Evidence, Scored

CONFIDENCES = (0.8, 0.9, 0.95)


def move_rates(rows: int, gain: float, trials: int = 500) -> dict[str, float]:
    """The share of trials in which the candidate is better on points, and better with each confidence."""
    rng = np.random.default_rng([rows, int(gain * 1000)])
    better, sure = [], []
    for trial in range(trials):
        y = rng.integers(0, 2, rows)
        candidate = np.where(rng.random(rows) < 0.80 + gain, y, 1 - y).astype("float32")
        champion = np.where(rng.random(rows) < 0.80, y, 1 - y).astype("float32")
        found = Evidence(Bootstrap.draw(rows, trial), "accuracy", "classification", 2, y).compare(
            Scored("candidate", candidate), Scored("champion", champion)
        )
        better.append(found["difference"] > 0)
        sure.append(found["p_better"])
    moved = np.asarray(better)
    shares = np.asarray(sure)
    return {
        "point": float(moved.mean()),
        **{f"{level}": float((moved & (shares >= level)).mean()) for level in CONFIDENCES},
    }


def cost(rows: int) -> dict[str, float]:
    """Seconds to draw the resamples, compare two models on accuracy and on ROC AUC, and score four slices."""
    rng = np.random.default_rng(rows)
    y = rng.integers(0, 2, rows)
    a = np.clip(0.3 * y + 0.7 * rng.random(rows), 0, 1).astype("float32")
    b = np.clip(0.2 * y + 0.8 * rng.random(rows), 0, 1).astype("float32")
    found = {}
    started = time.perf_counter()
    bootstrap = Bootstrap.draw(rows, 0)
    found["draw"] = time.perf_counter() - started
    for metric in ("accuracy", "roc_auc"):
        started = time.perf_counter()
        Evidence(bootstrap, metric, "classification", 2, y).compare(Scored("a", a), Scored("b", b))
        found[metric] = time.perf_counter() - started
    labels = {"group": np.asarray(["n", "s", "e", "w"], dtype=object)[rng.integers(0, 4, rows)]}
    started = time.perf_counter()
    Evidence(bootstrap, "accuracy", "classification", 2, y).slices(Scored("a", a), labels, Scored("b", b))
    found["slices"] = time.perf_counter() - started
    return found


def gate(rows: tuple[int, ...] = (100, 400, 2000)) -> dict[str, Any]:
    rates = [{"rows": n, "gain": gain, **move_rates(n, gain)} for n in rows for gain in (0.0, 0.03)]
    return {"move_rates": rates, "cost": {str(n): cost(n) for n in (359, 1_000_000)}}


def markdown(results: dict[str, Any], date: str, machine: dict[str, Any]) -> str:
    lines = [
        f"# The gate's evidence ({date}, {machine['cores']} cores)",
        "",
        "How often the candidate takes `champion` (500 trials each; independent errors; the champion at 80 %"
        " accuracy):",
        "",
        "| test rows | candidate truly | better on points (old rule) | "
        + " | ".join(f"min_confidence {level}" for level in CONFIDENCES)
        + " |",
        "|---|---|---|" + "---|" * len(CONFIDENCES),
    ]
    for row in results["move_rates"]:
        truly = "as good (a move is noise)" if row["gain"] == 0 else f"{row['gain']:.0%} better"
        shares = " | ".join(f"{row[str(level)]:.0%}" for level in CONFIDENCES)
        lines.append(f"| {row['rows']:,} | {truly} | {row['point']:.0%} | {shares} |")
    lines += [
        "",
        "What it costs (seconds; 1,000 resamples):",
        "",
        "| test rows | draw | compare, accuracy | compare, ROC AUC | 4 slices |",
        "|---|---|---|---|---|",
    ]
    for rows, found in results["cost"].items():
        lines.append(
            f"| {int(rows):,} | {found['draw']:.2f} | {found['accuracy']:.2f} | {found['roc_auc']:.2f} | "
            f"{found['slices']:.2f} |"
        )
    return "\n".join(lines)
