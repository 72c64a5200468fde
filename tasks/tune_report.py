"""What a finished study shows: a table of its trials and the figures the parent MLflow run holds.

- the validation curves of every trial on one chart (the tutorials' comparison of optimizers);
- the optimization history (each trial's value and the best so far);
- parallel coordinates (each trial a line through its searched values, coloured by its value);
- parameter importances (Optuna's fANOVA), when enough trials completed to estimate them.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from kerasflow.metrics import lower_is_better as lower_better
from kerasflow.plotting import pyplot, save_figure

logger = logging.getLogger(__name__)

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def state_name(trial: FrozenTrial) -> str:
    if trial.user_attrs.get("interrupted"):
        return "interrupted"
    return STATES.get(trial.state, trial.state.name.lower())


def trials_table(trials: list[FrozenTrial], keys: list[str]) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, seconds, each searched value, its MLflow run."""
    rows = []
    for trial in trials:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        rows.append(
            {
                "trial": trial.number,
                "state": state_name(trial),
                "value": trial.value,
                "epochs": trial.user_attrs.get("epochs"),
                "seconds": round(seconds, 1) if seconds is not None else None,
                **{key: trial.params.get(key) for key in keys},
                "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
                "note": trial.user_attrs.get("note", ""),
            }
        )
    return pd.DataFrame(rows)


def short_label(trial: FrozenTrial, keys: list[str]) -> str:
    """A trial named by its searched values, shortest key suffix first: `adam, lr 0.01`."""
    parts = []
    for key in keys:
        name = key.split(".")[-1].replace("learning_rate", "lr").replace("name", "").replace("optimizer", "")
        parts.append(f"{name} {shown(trial.params.get(key))}".strip())
    return f"#{trial.number} " + ", ".join(parts)


def shown(value: Any) -> str:
    """A searched value, short: numbers to 3 digits, a mapping (JSON text) as its values, name first."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str) and value.startswith("{"):
        mapping = json.loads(value)
        first = [str(mapping.pop("name"))] if "name" in mapping else []
        return " ".join(first + [f"{key} {shown(item)}" for key, item in mapping.items()])
    return str(value)


def curve_styles(trials: list[FrozenTrial], keys: list[str]) -> list[tuple[Any, str]]:
    """A colour and a line style per trial: when the first searched key has few values (an optimizer) and the
    second few too (a learning rate), colour by the first and dash by the second, so the chart reads as the
    tutorials' comparison; otherwise a colour per trial."""
    plt = pyplot()
    styles = ["-", "--", ":", "-."]
    first = sorted({shown(trial.params.get(keys[0])) for trial in trials}) if keys else []
    second = sorted({shown(trial.params.get(keys[1])) for trial in trials}, key=sort_key) if len(keys) > 1 else [""]
    if keys and len(first) <= 10 and len(second) <= len(styles) and len(keys) <= 2:
        colours = plt.get_cmap("tab10")
        return [
            (
                colours(first.index(shown(trial.params.get(keys[0])))),
                styles[second.index(shown(trial.params.get(keys[1]))) if len(keys) > 1 else 0],
            )
            for trial in trials
        ]
    colours = plt.get_cmap("tab20" if len(trials) > 10 else "tab10")
    return [(colours(index % colours.N), "-") for index in range(len(trials))]


def sort_key(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def plot_curves(trials: list[FrozenTrial], metric: str, keys: list[str], path: Path, title: str) -> bool:
    """Every trial's per-epoch validation curve on one chart; a pruned trial's ends in a cross where it stopped."""
    drawn = [
        trial
        for trial in trials
        if any(value is not None for value in trial.user_attrs.get("curves", {}).get(metric, []))
    ]
    if not drawn:
        return False
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(10, 5.5))
    ordered = sorted(drawn, key=lambda trial: [sort_key(shown(trial.params.get(key))) for key in keys])
    for trial, (colour, style) in zip(ordered, curve_styles(ordered, keys), strict=True):
        values = [math.nan if value is None else value for value in trial.user_attrs["curves"][metric]]
        epochs = range(1, len(values) + 1)
        ending = {TrialState.PRUNED: " (pruned)", TrialState.FAIL: " (failed)"}.get(trial.state, "")
        axis.plot(epochs, values, style, color=colour, linewidth=1.6, label=short_label(trial, keys) + ending)
        if trial.state == TrialState.PRUNED:
            axis.plot(len(values), values[-1], "x", color=colour, markersize=8)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axis.set_ylabel(metric)
    axis.set_title(title)
    if "loss" in metric:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    save_figure(figure, path)
    return True


def plot_history(trials: list[FrozenTrial], direction: str, metric: str, path: Path) -> bool:
    """Each completed trial's value by trial number, and the best value so far."""
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if not complete:
        return False
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    numbers = [trial.number for trial in complete]
    values = np.array([trial.value for trial in complete])
    best = np.minimum.accumulate(values) if direction == "minimize" else np.maximum.accumulate(values)
    axis.scatter(numbers, values, label="trial value", zorder=3)
    axis.step(numbers, best, where="post", color="tab:red", label="best so far")
    for trial in trials:
        if trial.state == TrialState.PRUNED:
            axis.axvline(trial.number, color="lightgrey", linewidth=1, zorder=1)
    axis.set_xlabel("trial (grey lines: pruned)")
    axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    if values.min() > 0 and values.max() / values.min() >= 100:
        axis.set_yscale("log")
    axis.set_ylabel(metric)
    axis.set_title(f"Optimization history ({direction} {metric})")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)
    return True


def axis_positions(values: list[Any]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Where each trial crosses one axis of the parallel-coordinates chart (0..1), and the labels to write on it:
    numbers scaled (logarithmically when they span two decades or more), choices spaced evenly."""
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        numeric = np.array(values, dtype=float)
        logarithmic = numeric.min() > 0 and numeric.max() / numeric.min() >= 100
        scaled = np.log10(numeric) if logarithmic else numeric
        low, high = scaled.min(), scaled.max()
        if high == low:
            return np.full(len(numeric), 0.5), [(0.5, f"{numeric[0]:.3g}")]
        positions = (scaled - low) / (high - low)
        distinct = sorted(set(numeric))
        shown_values = distinct if len(distinct) <= 6 else [numeric.min(), numeric.max()]
        place = dict(zip(numeric, positions, strict=True))
        return positions, [(float(place[value]), f"{value:.3g}") for value in shown_values]
    levels = sorted({shown(value) for value in values})
    place = {level: index / max(len(levels) - 1, 1) if len(levels) > 1 else 0.5 for index, level in enumerate(levels)}
    return np.array([place[shown(value)] for value in values]), [(place[level], level) for level in levels]


def plot_parallel(trials: list[FrozenTrial], keys: list[str], metric: str, path: Path) -> bool:
    """Parallel coordinates: one line per completed trial through its searched values, coloured by its value."""
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.params]
    if len(complete) < 2 or not keys:
        return False
    plt = pyplot()
    from matplotlib.colors import LogNorm, Normalize

    placed = [axis_positions([trial.params.get(key) for trial in complete]) for key in keys]
    scores = np.array([trial.value for trial in complete], dtype=float)
    spread = scores.min() > 0 and scores.max() / scores.min() >= 100
    norm = LogNorm(scores.min(), scores.max()) if spread else Normalize(scores.min(), scores.max())
    colour = plt.get_cmap("viridis_r" if lower_better(metric) else "viridis")
    figure, axis = plt.subplots(figsize=(max(6.0, 2.6 * len(keys)), 4.8))
    matrix = np.column_stack([positions for positions, _ in placed])
    for row, value in sorted(zip(matrix, scores, strict=True), key=lambda pair: -norm(pair[1])):
        axis.plot(range(len(keys)), row, color=colour(norm(value)), linewidth=2, alpha=0.85)
    for index, (_, labels) in enumerate(placed):
        axis.axvline(index, color="grey", linewidth=1)
        for height, text in labels:
            axis.text(index + 0.03, height, text, fontsize=8, va="center", ha="left")
    axis.set_xticks(range(len(keys)), [".".join(key.split(".")[-2:]) for key in keys], fontsize=9)
    axis.set_xlim(-0.2, len(keys) - 0.6)
    axis.set_ylim(-0.08, 1.08)
    axis.set_yticks([])
    figure.colorbar(plt.cm.ScalarMappable(cmap=colour, norm=norm), ax=axis, label=metric)
    axis.set_title("Searched values of the completed trials (brighter: better)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return True


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances, or {} when too few trials completed or nothing varied."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as error:  # e.g. every trial had the same values
        logger.info("parameter importances not computed: %s", error)
        return {}


def plot_importances(found: dict[str, float], path: Path) -> bool:
    if not found:
        return False
    plt = pyplot()
    names = list(found)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    axis.barh(names, [found[name] for name in names])
    axis.set_xlabel("importance (fANOVA)")
    axis.set_title("Which searched values mattered")
    figure.tight_layout()
    save_figure(figure, path)
    return True


def markdown_table(frame: pd.DataFrame, limit: int = 50) -> str:
    """The trials as a Markdown table (for the Prefect artifact and the run description)."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    shown = frame.drop(columns=["mlflow_run_id", "note"], errors="ignore").head(limit)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)
