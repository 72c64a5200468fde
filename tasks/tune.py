"""Tune: the Optuna side of a study.

The search space of `tune.space` as Optuna distributions, the sampler and pruner params.yaml
asks for, the study kept in a database (so a killed study continues where it stopped), and
how a trial's end is told to the study (`tasks/trial_callbacks.py` has the Keras side). MLflow
and Prefect are not used here: `flows/tuning.py` does that.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from kerasflow.config import EPOCH_METRICS, EPOCH_METRICS_BY_TASK, ConfigError, Params, SearchDimension, TuneParams
from kerasflow.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, lower_is_better

logger = logging.getLogger(__name__)

# Settings of how a study runs, not of what it searches: changing them continues the same study.
RUN_SETTINGS = ("n_trials", "parallelism", "task_runner", "dask_address", "study_name", "storage")
# Set on a trial that a kill interrupted; it is tried again and does not count towards n_trials.
INTERRUPTED = "interrupted"


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: single values as they are, a mapping as its JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def decode(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as params: JSON text of a mapping back to the mapping."""
    return {
        key: json.loads(value) if isinstance(value, str) and value.startswith("{") else value
        for key, value in values.items()
    }


def grid_points(dimension: SearchDimension) -> list[Any]:
    return [encode(value) for value in dimension.grid_values() or []]


def distributions(space: dict[str, SearchDimension], grid: bool) -> dict[str, BaseDistribution]:
    """One Optuna distribution per searched key (a grid searches every dimension as a list of values)."""
    found: dict[str, BaseDistribution] = {}
    for key, dimension in space.items():
        if grid:
            found[key] = CategoricalDistribution(grid_points(dimension))
        elif dimension.choice is not None:
            found[key] = CategoricalDistribution([encode(value) for value in dimension.choice])
        elif dimension.uniform is not None:
            found[key] = FloatDistribution(*dimension.uniform, step=dimension.step, log=dimension.log)
        elif dimension.loguniform is not None:
            found[key] = FloatDistribution(*dimension.loguniform, log=True)
        else:
            low, high = dimension.int  # type: ignore[misc]
            step = int(dimension.step or 1)
            found[key] = IntDistribution(low, high, step=1 if dimension.log else step, log=dimension.log)
    return found


def grid_size(space: dict[str, SearchDimension]) -> int:
    return math.prod(len(dimension.grid_values() or []) for dimension in space.values())


def trials_wanted(tune: TuneParams) -> int:
    """n_trials; a grid has no more than its points."""
    return min(tune.n_trials, grid_size(tune.space)) if tune.sampler == "grid" else tune.n_trials


def make_sampler(tune: TuneParams, seed: int) -> optuna.samplers.BaseSampler:
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler({key: grid_points(d) for key, d in tune.space.items()}, seed=seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials)


def make_pruner(tune: TuneParams) -> optuna.pruners.BasePruner:
    """median: a trial whose watched metric is worse than the median of earlier trials at the same epoch stops
    (not before `warmup_epochs`, nor while fewer than `startup_trials` trials have finished)."""
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)


def direction(tune: TuneParams) -> str:
    if tune.direction != "auto":
        return tune.direction
    return "minimize" if lower_is_better(tune.metric) else "maximize"


def logged_metrics(task: str) -> tuple[str, ...]:
    """The metrics a trial of this task can be judged on (see kerasflow.config.TUNE_METRICS)."""
    evaluated = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    return ("val_loss", *(f"val_{name}" for name in EPOCH_METRICS_BY_TASK[task]), *evaluated)


def check_metric(tune: TuneParams, task: str) -> None:
    """tune.metric must be one this model logs (known once preprocess has found the task)."""
    allowed = logged_metrics(task)
    if tune.metric not in allowed:
        raise ConfigError(f"tune.metric: a {task} model does not log {tune.metric!r}; expected one of {list(allowed)}")


def watched_metric(tune: TuneParams) -> tuple[str, float]:
    """The per-epoch metric the pruner watches, and the sign that puts it in the study's direction.

    A per-epoch metric is watched as itself; `accuracy`, `rmse` and `mae` as their `val_` curves;
    the others (f1, roc_auc, r2, ...), which Keras does not compute per epoch, through `val_loss`.
    """
    if tune.metric.startswith("val_"):
        return tune.metric, 1.0
    if tune.metric in EPOCH_METRICS:
        return f"val_{tune.metric}", 1.0
    return "val_loss", 1.0 if direction(tune) == "minimize" else -1.0


def objective_name(tune: TuneParams) -> str:
    """How a trial's value is named in MLflow: the metric on the validation split."""
    return tune.metric if tune.metric.startswith("val_") else f"val_{tune.metric}"


def study_name(params: Params) -> str:
    """The registered model's name and a hash of what the study searches: the same params and space continue the
    same study; changing either starts a new one (tune.study_name names it yourself)."""
    if params.tune.study_name:
        return params.tune.study_name
    tree = params.to_dict()
    for section in ("tracking", "predict"):
        tree.pop(section, None)
    for setting in RUN_SETTINGS:
        tree["tune"].pop(setting, None)
    digest = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:8]
    return f"{params.register_.model_name}-{digest}"


def storage_url(tune: TuneParams, tracking_uri: str, project_root: Path) -> str:
    """tune.storage, or `optuna.db` beside a local sqlite tracking store (beside the project otherwise);
    a relative sqlite path is taken from the project root."""
    prefix = "sqlite:///"
    if tune.storage:
        path = tune.storage.removeprefix(prefix)
        if tune.storage.startswith(prefix) and not path.startswith("/"):
            return prefix + str((project_root / path).resolve())
        return tune.storage
    if tracking_uri.startswith(prefix):
        return prefix + str(Path(tracking_uri.removeprefix(prefix)).with_name("optuna.db"))
    return prefix + str((project_root / "optuna.db").resolve())


@functools.cache
def storage(url: str) -> optuna.storages.RDBStorage:
    """One storage per process and database, shared by the trials running in it (RDBStorage is thread-safe).
    sqlite waits for a writer instead of failing at once when trials report at the same moment."""
    # Optuna's own INFO lines (a study created, a trial finished) repeat what the flow logs.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def open_study(params: Params, name: str, url: str) -> optuna.Study:
    """Create the study, or load it to continue (its direction must not have changed)."""
    tune = params.tune
    wanted = direction(tune)
    study = optuna.create_study(
        study_name=name,
        storage=storage(url),
        sampler=make_sampler(tune, params.seed),
        pruner=make_pruner(tune),
        direction=wanted,
        load_if_exists=True,
    )
    found = study.direction.name.lower()
    if found != wanted:
        raise ConfigError(
            f"tune.direction: study {name!r} in {url} was made to {found}, not {wanted}; "
            "name a new study with tune.study_name"
        )
    return study


def load_study(params: Params, name: str, url: str) -> optuna.Study:
    """The study as a trial sees it (its pruner decides whether the trial goes on)."""
    return optuna.load_study(study_name=name, storage=storage(url), pruner=make_pruner(params.tune))


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a kill: mark them failed (interrupted) and queue their params to be tried again.

    Called while this process holds the study's lock, so no other process is running them.
    """
    numbers = []
    store = study._storage  # noqa: SLF001 (Optuna has no public setter for another process's trial)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        store.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        # The grid sampler's after_trial may call Study.stop here, outside an objective (optuna/optuna#5141):
        # the trial is recorded failed by then, and its point is queued again just below.
        told(study.tell, trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if "grid_id" in trial.system_attrs:
            # The retry stands for the same grid point: GridSampler looks its point up when it is told.
            retry = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[-1]
            for name in ("grid_id", "search_space"):
                store.set_trial_system_attr(retry._trial_id, name, trial.system_attrs[name])
        numbers.append(trial.number)
    if numbers:
        logger.info("trials %s were interrupted; they run again", numbers)
    return numbers


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards n_trials: finished (complete, pruned or failed), not interrupted by a kill."""
    return [
        trial
        for trial in study.get_trials(deepcopy=False)
        if trial.state.is_finished() and not trial.user_attrs.get(INTERRUPTED)
    ]


def tell(study: optuna.Study, trial: optuna.trial.Trial, state: str, value: float | None) -> None:
    """Tell the study how a trial ended (complete with its value, pruned, or failed).

    A grid sampler's last point makes `tell` raise after the state is stored ("Study.stop is supposed
    to be invoked inside an objective function": optuna/optuna#5141, a known limit of ask-and-tell with
    GridSampler); the trial is recorded by then, and the study has simply run out of points.
    """
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    told(study.tell, trial, value if state == "complete" else None, state=states[state], skip_if_finished=True)


def told(telling: Any, *args: Any, **kwargs: Any) -> None:
    """Run a `study.tell`; the grid sampler's "Study.stop is supposed to be invoked inside an objective function"
    after the state is stored (its last point) is not an error here."""
    try:
        telling(*args, **kwargs)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


# Below this many training and validation rows, `tune.folds: auto` scores a trial by cross-validation.
FOLDS_BELOW_ROWS = 1000
AUTO_FOLDS = 5


def fold_count(setting: str | int, rows: int) -> int:
    """How many folds score a trial: tune.folds, with `auto` resolved by the rows (1: the validation split)."""
    if setting == "auto":
        return AUTO_FOLDS if rows < FOLDS_BELOW_ROWS else 1
    return max(1, min(int(setting), rows))


def write_folds(
    train: Path, val: Path, k: int, seed: int, folder: Path, label: str, stratify: bool
) -> list[tuple[Path, Path]]:
    """The training and validation split files' rows dealt into `k` folds (with `stratify`, each class's rows
    shuffled with the seed and dealt in turn, so every fold has its share of each class); for each fold, a
    training file of the other folds' rows and a validation file of its own, in `folder`."""
    import numpy as np
    import pandas as pd

    rows = pd.concat([pd.read_parquet(train), pd.read_parquet(val)], ignore_index=True)
    rng = np.random.default_rng([seed, 41])
    fold = np.empty(len(rows), dtype="int64")
    groups = rows.groupby(label, sort=True, dropna=False).indices.values() if stratify else [np.arange(len(rows))]
    for positions in groups:
        shuffled = rng.permutation(positions)
        fold[shuffled] = (np.arange(len(shuffled)) + int(rng.integers(k))) % k
    found = []
    for index in range(k):
        inside = fold == index
        paths = (folder / f"fold{index}-train.parquet", folder / f"fold{index}-val.parquet")
        rows[~inside].to_parquet(paths[0], index=False)
        rows[inside].to_parquet(paths[1], index=False)
        found.append(paths)
    return found
