"""Cross-fitting (train.cross_fit): the folds, what each member learns from and is scored on, and a fit whose
model still averages its members. Each with a case where it must not apply."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from kerasflow.config import ConfigError, ModelParams, TrainParams, parse_params
from tasks.cross_fit import Folds, assign_folds, fold_datasets, member_names, members_view
from tasks.datasets import predict
from tasks.fit import TrainingData, build_setup, fit_setup, validation_outputs
from tasks.preprocess import Split, pooled
from tasks.resume import Backup
from tests.unit.helpers import prepare

LAYERS = [{"type": "dense", "units": 16, "activation": "relu"}]


@pytest.fixture(scope="module")
def cancer():
    frame = load_breast_cancer(as_frame=True).frame
    return prepare(frame, "target", "classification", train_rows=400)


def test_folds_are_even_and_each_class_spreads_across_them():
    y = np.array([0] * 70 + [1] * 25 + [2] * 8)  # imbalanced, and ordered by class
    fold = assign_folds(y, 4, seed=3, stratify=True)
    sizes = np.bincount(fold, minlength=4)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(y)
    for label in (0, 1, 2):
        per_fold = np.bincount(fold[y == label], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
    np.testing.assert_array_equal(fold, assign_folds(y, 4, seed=3, stratify=True))  # seeded
    assert not np.array_equal(fold, assign_folds(y, 4, seed=4, stratify=True))
    # Not stratified (a regression target): even sizes still, the rows drawn in a seeded order, not in file order.
    loose = assign_folds(np.linspace(0, 1, 103), 4, seed=3, stratify=False)
    assert np.bincount(loose).max() - np.bincount(loose).min() <= 1
    assert not np.array_equal(loose, np.arange(103) % 4)


def test_each_member_learns_from_every_fold_but_its_own_and_is_scored_on_its_own(cancer):
    model = keras_model(cancer, ensemble=3)
    view = members_view(model, ModelParams(layers=LAYERS, ensemble=3), cancer.data, False)
    rows = Split(cancer.x, cancer.y)
    folds = Folds(rows, assign_folds(rows.y, 3, seed=0, stratify=True), view)
    assert folds.members == 3
    train, val = fold_datasets(folds, cancer.inputs, 64, False, 0, {0: 1.0, 1: 3.0})

    def weights(dataset) -> dict[str, np.ndarray]:
        parts = [batch[2] for batch in dataset.as_numpy_iterator()]
        return {name: np.concatenate([part[name] for part in parts]) for name in member_names(3)}

    learns, scored = weights(train), weights(val)
    class_weight = np.where(rows.y == 1, 3.0, 1.0)
    for index, name in enumerate(member_names(3)):
        own = folds.fold == index
        assert np.all(learns[name][own] == 0)  # never its own fold
        np.testing.assert_allclose(learns[name][~own], class_weight[~own] / 2)  # every other row, class-weighted
        np.testing.assert_array_equal(scored[name], own.astype("float32"))  # scored on its own fold only
    # Every row is scored once, by one member, and learnt from by the other two.
    np.testing.assert_array_equal(sum(scored.values()), np.ones(len(rows)))
    np.testing.assert_array_equal(sum(value > 0 for value in learns.values()), np.full(len(rows), 2))


def keras_model(prepared, **values):
    from tasks.model import build_model

    return build_model(ModelParams.model_validate({"layers": LAYERS, **values}), prepared.data)


def test_a_cross_fitted_ensemble_learns_and_still_serves_the_average_of_its_members(cancer):
    keras.utils.set_random_seed(0)
    x, y = cancer.x, cancer.y
    train, val = Split(x.iloc[:400], y[:400]), Split(x.iloc[400:500].reset_index(drop=True), y[400:500])
    data = TrainingData(cancer.data, train, val)
    spec = ModelParams(layers=LAYERS, ensemble=4)
    params = TrainParams(epochs=12, batch_size=32, cross_fit=True, checkpoint=False)
    setup = build_setup(spec, params, 0, data)
    assert setup.folds is not None and len(setup.folds.rows) == 500  # the training and validation rows pooled
    history = fit_setup(spec, params, 0, data, setup, [])
    assert history["loss"][-1] < history["loss"][0] * 0.7
    assert "val_loss" in history and not [name for name in history if "member_" in name]
    # The out-of-fold outputs: each pooled row scored by the member that did not learn from it; they beat chance
    # (about 0.63), and they are not the served model's outputs (which every other member shares in).
    labels, outputs = validation_outputs(setup, data, 256)
    assert len(labels) == 500 and np.mean((outputs.ravel() >= 0.5) == labels) > 0.85
    served = predict(setup.model, pooled(train, val).x, cancer.inputs)
    assert not np.allclose(served, outputs)
    members = setup.folds.view.predict(_features(cancer, pooled(train, val)), verbose=0)
    np.testing.assert_allclose(served, np.mean([members[name] for name in member_names(4)], axis=0), atol=1e-5)
    # Without cross_fit the setup has no folds, and validation is the validation split.
    plain = build_setup(spec, TrainParams(epochs=1, checkpoint=False), 0, data)
    assert plain.folds is None and len(validation_outputs(plain, data, 256)[0]) == 100


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_cross_fitted_fit_logs_the_tasks_metrics_pooled_out_of_fold(cancer, task):
    """Per-epoch accuracy (or rmse and mae) as for any model, not the members' own: the validation value is the
    metric over every pooled row, each scored by the member that did not learn from it."""
    from sklearn.datasets import load_diabetes

    from tasks.cross_fit import MemberLogs
    from tasks.train import training_callbacks

    keras.utils.set_random_seed(0)
    if task == "classification":
        prepared, rows = cancer, 500
    else:
        prepared, rows = prepare(load_diabetes(as_frame=True).frame, "target", "regression", train_rows=300), 400
    x, y = prepared.x, prepared.y
    data = TrainingData(
        prepared.data, Split(x.iloc[:300], y[:300]), Split(x.iloc[300:rows].reset_index(drop=True), y[300:rows])
    )
    spec = ModelParams(layers=LAYERS, ensemble=3)
    params = TrainParams(epochs=4, batch_size=32, cross_fit=True, checkpoint=False, early_stopping={"enabled": False})
    setup = build_setup(spec, params, 0, data)
    history = fit_setup(spec, params, 0, data, setup, [])
    names = {"classification": ["accuracy"], "regression": ["mae", "rmse"]}[task]
    assert sorted(history) == sorted(["loss", "val_loss", *names, *(f"val_{name}" for name in names)])
    labels, outputs = validation_outputs(setup, data, 256)
    labels, outputs = np.asarray(labels).ravel(), np.asarray(outputs).ravel()
    if task == "classification":
        np.testing.assert_allclose(history["val_accuracy"][-1], np.mean((outputs > 0.5) == labels), atol=1e-6)
        assert history["accuracy"][-1] > 0.8  # the members' training rows, learnt
    else:
        np.testing.assert_allclose(history["val_mae"][-1], np.mean(np.abs(outputs - labels)), rtol=1e-4)
        np.testing.assert_allclose(history["val_rmse"][-1], np.sqrt(np.mean((outputs - labels) ** 2)), rtol=1e-4)
    # The pooling callback comes first, so early stopping (and everything else) reads the pooled metrics.
    pooling = MemberLogs(setup.folds, None)
    assert training_callbacks(params, None, None, [keras.callbacks.History(), pooling])[0] is pooling


def _features(prepared, split):
    from kerasflow.model_interface import to_model_inputs

    return {name: np.asarray(values) for name, values in to_model_inputs(split.x, prepared.inputs).items()}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"model": {"ensemble": 1}}, "model.ensemble must be at least 2"),
        ({"model": {"ensemble": 4, "linear_skip": True}}, "model.linear_skip must be false"),
        ({"model": {"ensemble": 4}, "train": {"fine_tune": {"epochs": 2}}}, "train.fine_tune.epochs must be 0"),
    ],
)
def test_cross_fit_refuses_what_it_cannot_fold(changes, named):
    tree = {"model": {"layers": LAYERS}, "train": {"cross_fit": True}}
    for section, values in changes.items():
        tree[section] = {**tree.get(section, {}), **values}
    with pytest.raises(ConfigError, match=named):
        parse_params(tree)
    # The same settings without cross_fit are fine, and cross_fit with four plain members is too.
    parse_params({**tree, "train": {**tree["train"], "cross_fit": False}})
    assert parse_params({"model": {"layers": LAYERS, "ensemble": 4}, "train": {"cross_fit": True}}).train.cross_fit


def test_a_killed_cross_fitted_fit_resumes_after_its_last_finished_epoch(cancer, tmp_path):
    x, y = cancer.x, cancer.y
    data = TrainingData(cancer.data, Split(x.iloc[:400], y[:400]), Split(x.iloc[400:].reset_index(drop=True), y[400:]))
    spec = ModelParams(layers=LAYERS, ensemble=3)
    params = TrainParams(epochs=5, batch_size=64, cross_fit=True, checkpoint=False, early_stopping={"enabled": False})
    backup, seen = tmp_path / "backup", []

    killed_losses = []

    class Killed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            killed_losses.append(logs["loss"])
            if epoch == 2:  # the backup keeps epochs 0 and 1
                raise RuntimeError("killed")

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))

    with pytest.raises(RuntimeError, match="killed"):
        fit_setup(spec, params, 0, data, build_setup(spec, params, 0, data), [Killed()], backup=backup)
    # As a new process would: the model and its view built again, the folds dealt again from the seed.
    setup = build_setup(spec, params, 0, data)
    history = fit_setup(spec, params, 0, data, setup, [Recorder()], backup=backup)
    assert [epoch for epoch, _ in seen] == [2, 3, 4] and len(history["loss"]) == 3
    assert seen[0][1] == ["accuracy", "loss", "val_accuracy", "val_loss"]  # the members' own entries left out
    assert Backup(backup).completed_epochs() == 5
    # Resumed from the weights the killed attempt left, not from a new start: its first epoch's loss is below the
    # killed attempt's first, and the served model beats chance (about 0.63).
    assert history["loss"][0] < killed_losses[0] and history["loss"][-1] < history["loss"][0]
    labels, outputs = validation_outputs(setup, data, 256)
    assert np.mean((outputs.ravel() >= 0.5) == labels) > 0.75
