"""What a finished study shows: a table of its trials and the figures the parent MLflow run holds.

Optuna provides the table (`study.trials_dataframe`) and three of the charts (`optuna.visualization.matplotlib`):
the optimization history, the parallel coordinates and the parameter importances (fANOVA, when enough trials
completed to estimate them). Drawn here is the one Optuna has no match for: every trial's per-epoch validation
curve on one chart, coloured by optimizer and dashed by learning rate (the tutorials' comparison of optimizers).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from kerasflow.config import Params
from kerasflow.plotting import pyplot, save_figure
from kerasflow.records import BestTrial, StudyPlan, StudySummary

logger = logging.getLogger(__name__)

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


def trials_table(study: optuna.Study, keys: list[str]) -> pd.DataFrame:
    """One row per finished trial (an interrupted one is left out): number, state, value, epochs run, seconds,
    each searched value, its MLflow run and note; Optuna's `trials_dataframe` renamed to these columns."""
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
    frame = frame.reindex(
        columns=[
            "number", "value", "state", "duration", *(f"params_{key}" for key in keys),
            "user_attrs_epochs", "user_attrs_mlflow_run_id", "user_attrs_note", "user_attrs_interrupted",
        ]
    )  # fmt: skip
    frame = frame[frame["state"].isin(list(STATES)) & (frame["user_attrs_interrupted"] != True)]  # noqa: E712
    table = pd.DataFrame(
        {
            "trial": frame["number"],
            "state": frame["state"].map(STATES),
            "value": frame["value"],
            "epochs": frame["user_attrs_epochs"],
            "seconds": pd.to_timedelta(frame["duration"]).dt.total_seconds().round(1),
            **{key: frame[f"params_{key}"] for key in keys},
            "mlflow_run_id": frame["user_attrs_mlflow_run_id"],
            "note": frame["user_attrs_note"].fillna(""),
        }
    )
    return table.reset_index(drop=True)


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


def optuna_chart(draw: Callable[[], Any], path: Path) -> bool:
    """Save the figure of one of Optuna's matplotlib charts (experimental in Optuna: its warning is expected).
    Optuna switches matplotlib to its "ggplot" style: the rc context puts the process's style back after."""
    plt = pyplot()
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        axes = draw()
    figure = axes.figure
    figure.set_size_inches(8, 4.5)
    figure.tight_layout()
    save_figure(figure, path)
    return True


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def plot_history(study: optuna.Study, metric: str, path: Path) -> bool:
    """Each completed trial's value by trial number, and the best value so far."""
    if not completed(study):
        return False
    from optuna.visualization.matplotlib import plot_optimization_history

    return optuna_chart(lambda: plot_optimization_history(study, target_name=metric), path)


def plot_parallel(study: optuna.Study, keys: list[str], metric: str, path: Path) -> bool:
    """Parallel coordinates: one line per completed trial through its searched values, coloured by its value."""
    if len([trial for trial in completed(study) if trial.params]) < 2 or not keys:
        return False
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    return optuna_chart(lambda: plot_parallel_coordinate(study, params=keys, target_name=metric), path)


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


def plot_importances(study: optuna.Study, found: dict[str, float], path: Path) -> bool:
    """Optuna's importance chart, when `importances` found any."""
    if not found:
        return False
    from optuna.visualization.matplotlib import plot_param_importances

    return optuna_chart(lambda: plot_param_importances(study), path)


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


def summarize_study(params: Params, plan: StudyPlan) -> StudySummary:
    """The parent run's record of the study: best value and params, counts, the trials table and the charts."""
    import pandas as pd

    from kerasflow import tracking
    from tasks import tune

    study = tune.load_study(params, plan.study, plan.storage)
    trials = sorted(tune.counted_trials(study), key=lambda trial: trial.number)
    keys = list(params.tune.space)
    objective = tune.objective_name(params.tune)
    direction = tune.direction(params.tune)
    table = trials_table(study, keys)
    counts = {state: int((table["state"] == state).sum()) for state in ("complete", "pruned", "failed")}
    run_id = plan.parent_run_id
    metrics = {f"trials_{state}": count for state, count in counts.items()}
    metrics["epochs_total"] = float(pd.to_numeric(table["epochs"]).fillna(0).sum())
    tags = {"tune.n_trials": str(params.tune.n_trials), "tune.parallelism": str(params.tune.parallelism)}
    best = None
    if counts["complete"]:
        best = study.best_trial
        metrics[f"best_{objective}"] = best.value
        tags |= {"best.trial": str(best.number), "best.mlflow_run_id": str(best.user_attrs.get("mlflow_run_id"))}
        tags |= {f"best.{key}": str(value) for key, value in best.params.items()}
    tracking.log_metrics(run_id, metrics)
    tracking.set_tags(run_id, tags)
    found = importances(study)
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        table.to_csv(where / "trials.csv", index=False)
        tracking.log_files(run_id, where / "trials.csv")
        tracking.log_table(run_id, table.drop(columns=["note"]), "trials.json")
        tracking.log_dict(run_id, {"best": best.params if best else None, "importances": found}, "study.json")
        title = f"{params.register_.model_name}: {tune.watched_metric(params.tune)[0]} of every trial"
        drawn = {
            "validation_curves.png": plot_curves(
                trials, tune.watched_metric(params.tune)[0], keys, where / "validation_curves.png", title
            ),
            "optimization_history.png": plot_history(study, objective, where / "optimization_history.png"),
            "parallel_coordinates.png": plot_parallel(study, keys, objective, where / "parallel_coordinates.png"),
            "param_importances.png": plot_importances(study, found, where / "param_importances.png"),
        }
        tracking.log_files(run_id, *(where / name for name, made in drawn.items() if made), folder="charts")
    return StudySummary(
        plan.study,
        plan.storage,
        run_id,
        objective,
        direction,
        counts,
        BestTrial(best.number, best.value, best.params) if best else None,
        markdown_table(table),
        found,
    )
