"""Tuning's own parts: the search space, its checks, the study's storage and resume, pruning, the report."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kerasflow.config import ConfigError, load_params, parse_params
from kerasflow.overrides import apply_overrides
from kerasflow.search_space import check_search_space
from tasks import tune, tune_report
from tests.conftest import REPO_ROOT

BASE = load_params(REPO_ROOT / "params.yaml")


def with_tune(**settings):
    """The shipped params with a `tune` section of `settings` (checked like `kerasflow tune` checks it)."""
    tree = apply_overrides(BASE.to_dict(), {f"tune.{key}": value for key, value in settings.items()})
    params = parse_params(tree, "params.yaml")
    check_search_space(params)
    return params


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"space": {"model.optimiser.name": {"choice": ["sgd"]}}}, "'model.optimiser.name'"),
        ({"space": {"model.layers.9.units": {"int": [8, 16]}}}, "'model.layers.9.units'"),
        ({"space": {"model.optimizer.learning_rate": {"uniform": [0.1, 0.01]}}}, "low 0.1 must be below high 0.01"),
        ({"space": {"model.optimizer.learning_rate": {"uniform": [0.1, 0.1]}}}, "low 0.1 must be below high 0.1"),
        ({"space": {"model.optimizer.learning_rate": {"loguniform": [0.0, 0.1]}}}, "must be above zero, got low 0.0"),
        ({"space": {"model.optimizer.name": {"choice": []}}}, "choice is empty"),
        (
            {"sampler": "grid", "space": {"model.optimizer.learning_rate": {"loguniform": [1e-4, 1e-1]}}},
            "a grid cannot cover the continuous range(s) of ['model.optimizer.learning_rate']",
        ),
        ({"n_trials": 0}, "tune.n_trials: Input should be greater than or equal to 1"),
        ({"metric": "val_f1"}, "tune.metric: 'val_f1' is not a metric a trial logs"),
        ({"space": {}}, "tune.space is empty"),
        ({"space": {"preprocess.val_fraction": {"choice": [0.1, 0.2]}}}, "'preprocess.val_fraction' changes the data"),
        ({"space": {"tune.n_trials": {"choice": [1, 2]}}}, "'tune.n_trials' is not a setting of a trial"),
        # Every value must make valid params: the second learning rate is below zero.
        (
            {"space": {"model.optimizer.learning_rate": {"choice": [0.1, -1.0]}}},
            "= -1.0 is not a param a trial can set",
        ),
        ({"space": {"model.optimizer.name": {"choice": ["sgd", "adamw2"]}}}, "'adamw2' is not a param a trial can set"),
        ({"task_runner": "dask"}, "task_runner dask needs dask_address"),
    ],
)
def test_bad_search_settings_name_the_key(settings, expected):
    with pytest.raises(ConfigError) as error:
        with_tune(**settings)
    assert expected in str(error.value)


def test_a_metric_the_task_does_not_log_is_refused_naming_both():
    params = with_tune(metric="val_rmse")  # a regression metric: valid in general
    with pytest.raises(ConfigError, match=r"tune.metric: a classification model does not log 'val_rmse'"):
        tune.check_metric(params.tune, "classification")
    tune.check_metric(params.tune, "regression")


def test_each_kind_of_dimension_becomes_its_optuna_distribution():
    params = with_tune(
        space={
            "model.optimizer": {"choice": [{"name": "sgd", "momentum": 0.9}, {"name": "adam"}]},
            "model.optimizer.learning_rate": {"loguniform": [1e-4, 1e-1]},
            "model.layers.5.units": {"int": [32, 256], "step": 32},
            "model.layers.6.rate": {"uniform": [0.0, 0.5]},
        }
    )
    found = tune.distributions(params.tune.space, grid=False)
    assert found["model.optimizer"].choices == ('{"momentum": 0.9, "name": "sgd"}', '{"name": "adam"}')
    assert found["model.optimizer.learning_rate"].log and found["model.optimizer.learning_rate"].low == 1e-4
    assert (found["model.layers.5.units"].low, found["model.layers.5.units"].high) == (32, 256)
    assert found["model.layers.5.units"].step == 32
    assert (found["model.layers.6.rate"].low, found["model.layers.6.rate"].high) == (0.0, 0.5)
    # A trial's values become params again: the mapping sets two keys of the section, the rest stay.
    values = tune.decode({"model.optimizer": '{"momentum": 0.9, "name": "sgd"}', "model.layers.5.units": 64})
    trial = parse_params(apply_overrides(BASE.to_dict(), values))
    assert (trial.model.optimizer.name, trial.model.optimizer.momentum) == ("sgd", 0.9)
    assert trial.model.optimizer.learning_rate == BASE.model.optimizer.learning_rate
    assert trial.model.layers[5].arguments["units"] == 64


def test_a_grid_has_every_combination_and_no_more_trials_than_points():
    params = with_tune(
        sampler="grid",
        n_trials=50,
        space={
            "model.optimizer.name": {"choice": ["sgd", "adam", "rmsprop"]},
            "model.layers.5.units": {"int": [32, 96], "step": 32},
            "model.layers.6.rate": {"uniform": [0.0, 0.5], "step": 0.25},
        },
    )
    assert tune.grid_size(params.tune.space) == 3 * 3 * 3
    assert tune.trials_wanted(params.tune) == 27
    assert tune.distributions(params.tune.space, grid=True)["model.layers.6.rate"].choices == (0.0, 0.25, 0.5)


def test_direction_and_watched_metric_follow_the_metric():
    assert tune.direction(with_tune(metric="val_loss").tune) == "minimize"
    assert tune.direction(with_tune(metric="val_accuracy").tune) == "maximize"
    assert tune.watched_metric(with_tune(metric="accuracy").tune) == ("val_accuracy", 1.0)
    # f1 has no per-epoch curve: the pruner watches val_loss, turned to the study's direction.
    assert tune.watched_metric(with_tune(metric="f1").tune) == ("val_loss", -1.0)
    assert tune.objective_name(with_tune(metric="f1").tune) == "val_f1"


def test_the_study_name_follows_what_is_searched_not_how_many_trials():
    space = {"model.optimizer.name": {"choice": ["sgd", "adam"]}}
    first = tune.study_name(with_tune(n_trials=5, space=space))
    assert first.startswith("kerasflow-digits-cnn-")
    assert tune.study_name(with_tune(n_trials=50, parallelism=2, space=space)) == first
    assert tune.study_name(with_tune(n_trials=5, space={"model.optimizer.name": {"choice": ["sgd"]}})) != first
    changed = parse_params(apply_overrides(with_tune(space=space).to_dict(), {"train.batch_size": 64}))
    assert tune.study_name(changed) != first


def test_the_study_is_kept_beside_a_local_tracking_store(tmp_path):
    settings = with_tune().tune
    assert tune.storage_url(settings, "sqlite:////data/mlflow.db", tmp_path) == "sqlite:////data/optuna.db"
    assert tune.storage_url(settings, "http://mlflow:5000", tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"
    relative = with_tune(storage="sqlite:///studies/s.db").tune
    assert tune.storage_url(relative, "sqlite:////data/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/studies/s.db"


def study_in(folder: Path, sampler: str = "tpe", **settings) -> tuple[optuna.Study, object]:
    space = settings.pop("space", {"model.optimizer.name": {"choice": ["sgd", "adam", "rmsprop"]}})
    params = with_tune(sampler=sampler, space=space, **settings)
    return tune.open_study(params, "s", f"sqlite:///{folder / 'optuna.db'}"), params


@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_a_trial_a_kill_interrupted_runs_again_and_does_not_count(tmp_path, sampler):
    study, params = study_in(tmp_path, sampler)
    space = tune.distributions(params.tune.space, grid=sampler == "grid")
    done = study.ask(space)
    tune.tell(study, done, "complete", 0.5)
    killed = study.ask(space)  # left RUNNING, as a SIGKILL leaves it

    again, _ = study_in(tmp_path, sampler)  # the next run of the study
    assert tune.recover_interrupted(again) == [killed.number]
    assert [trial.number for trial in tune.counted_trials(again)] == [done.number]
    retry = again.ask(space)
    assert retry.params == killed.params and retry.number != killed.number
    tune.tell(again, retry, "complete", 0.4)  # a grid knows the point the retry stands for
    states = {trial.number: trial.state for trial in again.get_trials()}
    assert states == {
        done.number: TrialState.COMPLETE,
        killed.number: TrialState.FAIL,
        retry.number: TrialState.COMPLETE,
    }
    assert len(tune.counted_trials(again)) == 2


def test_a_grid_told_its_last_point_does_not_raise(tmp_path):
    study, params = study_in(tmp_path, "grid", space={"model.optimizer.name": {"choice": ["sgd", "adam"]}})
    space = tune.distributions(params.tune.space, grid=True)
    for value in (1.0, 2.0):
        tune.tell(study, study.ask(space), "complete", value)  # optuna/optuna#5141 raises on the last one
    assert sorted(trial.params["model.optimizer.name"] for trial in study.get_trials()) == ["adam", "sgd"]


def test_a_continued_study_keeps_its_direction(tmp_path):
    study_in(tmp_path, metric="val_loss")
    with pytest.raises(ConfigError, match="was made to minimize, not maximize"):
        study_in(tmp_path, metric="val_accuracy")


def test_pruning_stops_a_trial_that_trails_the_median(tmp_path):
    from tasks.trial_callbacks import PruningCallback

    study, params = study_in(tmp_path, warmup_epochs=1, startup_trials=2)
    space = tune.distributions(params.tune.space, grid=False)
    for _ in range(2):  # two trials that got better every epoch
        trial = study.ask(space)
        for epoch, value in enumerate([1.0, 0.5, 0.25]):
            trial.report(value, epoch)
        tune.tell(study, trial, "complete", 0.25)
    good = PruningCallback(study.ask(space), "val_loss")
    bad = PruningCallback(study.ask(space), "val_loss")
    for epoch, value in enumerate([0.9, 0.4]):
        good.on_epoch_end(epoch, {"val_loss": value})
    bad.on_epoch_end(0, {"val_loss": 3.0})  # epoch 0 is warm-up: never pruned
    with pytest.raises(optuna.TrialPruned, match=r"pruned after epoch 2: val_loss 2.5 trails the median"):
        bad.on_epoch_end(1, {"val_loss": 2.5})
    # NaN is not reported: TerminateOnNaN ends such a trial as failed.
    PruningCallback(study.ask(space), "val_loss").on_epoch_end(5, {"val_loss": math.nan})
    # At its last epoch a trial is complete, however it trails: pruning it then would save nothing.
    last = PruningCallback(study.ask(space), "val_loss", epochs=2)
    last.on_epoch_end(0, {"val_loss": 3.0})
    last.on_epoch_end(1, {"val_loss": 2.5})


def finished_study(folder: Path) -> tuple[optuna.Study, list[str]]:
    study, params = study_in(
        folder,
        "random",
        space={
            "model.optimizer.name": {"choice": ["sgd", "adam"]},
            "model.optimizer.learning_rate": {"loguniform": [1e-4, 1e-1]},
        },
    )
    space = tune.distributions(params.tune.space, grid=False)
    for number in range(5):
        trial = study.ask(space)
        curve = [1.0 / (epoch + 1 + number) for epoch in range(4 if number != 3 else 2)]
        trial.set_user_attr("curves", {"val_loss": curve})
        trial.set_user_attr("epochs", len(curve))
        state = "pruned" if number == 3 else "failed" if number == 4 else "complete"
        if state == "pruned":
            trial.report(curve[-1], 1)
        tune.tell(study, trial, state, curve[-1] if state == "complete" else None)
    return study, list(params.tune.space)


def test_the_report_has_a_row_per_trial_and_draws_each_chart(tmp_path):
    study, keys = finished_study(tmp_path)
    trials = study.get_trials()
    table = tune_report.trials_table(study, keys)
    assert list(table["state"]) == ["complete", "complete", "complete", "pruned", "failed"]
    assert list(table["epochs"]) == [4, 4, 4, 2, 4]
    assert {"model.optimizer.name", "model.optimizer.learning_rate", "value"} <= set(table.columns)
    assert tune_report.markdown_table(table).count("\n") == 1 + len(trials)
    charts = {
        "curves": tune_report.plot_curves(trials, "val_loss", keys, tmp_path / "c.png", "t"),
        "history": tune_report.plot_history(study, "val_loss", tmp_path / "h.png"),
        "parallel": tune_report.plot_parallel(study, keys, "val_loss", tmp_path / "p.png"),
        "importances": tune_report.plot_importances(study, tune_report.importances(study), tmp_path / "i.png"),
    }
    assert charts == {"curves": True, "history": True, "parallel": True, "importances": True}
    assert all((tmp_path / name).stat().st_size > 5000 for name in ("c.png", "h.png", "p.png", "i.png"))


def test_labels_show_a_mapping_choice_by_its_values():
    assert tune_report.shown('{"momentum": 0.9, "name": "sgd"}') == "sgd momentum 0.9"
    assert tune_report.shown(0.000123456) == "0.000123"


def test_a_grid_study_killed_in_its_last_trial_continues_at_the_first_try(tmp_path):
    """Marking the killed last grid point failed makes the grid sampler stop the study from outside an objective
    (optuna/optuna#5141): the next run once failed at once with Optuna's RuntimeError."""
    study, params = study_in(tmp_path, "grid")
    space = tune.distributions(params.tune.space, grid=True)
    for _ in range(2):
        tune.tell(study, study.ask(space), "complete", 0.5)
    killed = study.ask(space)  # the last of the three points, left RUNNING by a SIGKILL
    again, _ = study_in(tmp_path, "grid")
    assert tune.recover_interrupted(again) == [killed.number]
    retry = again.ask(space)
    assert retry.params == killed.params
    tune.tell(again, retry, "complete", 0.4)
    assert len(tune.counted_trials(again)) == 3


def test_small_data_is_cross_validated_and_its_folds_are_disjoint_stratified_and_complete(tmp_path):
    import pandas as pd

    from tasks.tune import fold_count, write_folds

    assert fold_count("auto", 999) == 5 and fold_count("auto", 1000) == 1  # from 1,000 rows: the validation split
    assert fold_count(3, 50_000) == 3 and fold_count(1, 10) == 1
    labels = [0] * 80 + [1] * 20
    pd.DataFrame({"x": range(80), "__label__": labels[:80]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"x": range(80, 100), "__label__": labels[80:]}).to_parquet(tmp_path / "val.parquet")
    folds = write_folds(tmp_path / "train.parquet", tmp_path / "val.parquet", 4, 0, tmp_path, "__label__", True)
    held_out = [pd.read_parquet(val) for _, val in folds]
    assert sorted(x for frame in held_out for x in frame["x"]) == list(range(100))  # each row held out once
    for (train, _), val in zip(folds, held_out, strict=True):
        assert set(pd.read_parquet(train)["x"]).isdisjoint(val["x"]) and len(pd.read_parquet(train)) + len(val) == 100
        assert val["__label__"].sum() == 5  # a quarter of the 20 positives in each fold
    again = write_folds(tmp_path / "train.parquet", tmp_path / "val.parquet", 4, 0, tmp_path, "__label__", True)
    assert [list(pd.read_parquet(val)["x"]) for _, val in again] == [list(frame["x"]) for frame in held_out]
