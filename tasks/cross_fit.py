"""Cross-fitting (`train.cross_fit`): k-fold bagging of the ensemble's members inside one model and one `fit`.

The training and validation rows are pooled and dealt into k folds (k = `model.ensemble`, stratified by class).
Member i learns from every fold but fold i, and fold i validates it: the validation loss early stopping watches is
each row's loss under the one member that did not learn from it (out of fold). So every labelled row outside the
test split both trains (k - 1 members) and validates (one), where a plain split keeps a tenth of the rows for
validation only. This is how AutoGluon bags its tabular networks; the out-of-fold outputs are scikit-learn's
`cross_val_predict`.

What is trained is a view of the model whose outputs are the members' own (`members_view`, the same layers and
weights); what is saved and served is the model itself, whose output averages the members. The view's
sample weights carry the folds (a member's weight is zero on its own fold) and any class weights. Each member's
metrics are weighted by the same weights, and `MemberLogs` pools them into the task's per-epoch metrics: the
validation ones are the out-of-fold scores of every pooled row, as the loss is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasflow.config import ModelParams
from kerasflow.model_interface import ModelInputs, to_model_inputs
from kerasflow.records import PreprocessState
from tasks.datasets import SCORING_BATCH
from tasks.model import default_metrics, weighted_loss
from tasks.preprocess import Split


def member_names(members: int) -> list[str]:
    return [f"member_{index}" for index in range(members)]


@dataclass(frozen=True)
class Folds:
    """The pooled training and validation rows, each row's fold, and the members' view that learns from them."""

    rows: Split
    fold: np.ndarray
    view: keras.Model

    @property
    def members(self) -> int:
        return len(self.view.outputs)


def assign_folds(y: np.ndarray, members: int, seed: int, stratify: bool) -> np.ndarray:
    """Each row's fold (0 to members - 1): the rows in a seeded order (grouped by class when `stratify`) dealt out
    in turn, so the folds differ in size by one row at most, and each class spreads evenly across them."""
    labels = np.asarray(y).reshape(len(y), -1)[:, 0]
    order = np.random.default_rng([seed, members]).permutation(len(labels))
    if stratify:
        order = order[np.argsort(labels[order], kind="stable")]
    fold = np.empty(len(labels), dtype="int32")
    fold[order] = np.arange(len(labels)) % members
    return fold


def members_view(model: keras.Model, spec: ModelParams, state: PreprocessState, jit_compile: bool | str) -> keras.Model:
    """The model's members, each with its own output (in the target's units, as the model's), compiled with the
    model's loss (and its weight) for each, the task's per-epoch metrics for each (weighted by the folds, pooled by
    `MemberLogs`), and the model's own optimizer (so the saved model holds the training state)."""
    names = member_names(spec.ensemble)
    heads = [model.get_layer(f"output_{index}").output for index in range(spec.ensemble)]
    if state.fitted.target:
        scaling = model.get_layer("target_scaling")
        heads = [scaling(head) for head in heads]
    view = keras.Model(model.inputs, dict(zip(names, heads, strict=True)), name=f"{model.name}_members")
    loss, weight = weighted_loss(spec, state)
    view.compile(
        optimizer=model.optimizer,
        loss={name: loss for name in names},
        loss_weights={name: weight or 1.0 for name in names},
        weighted_metrics={name: default_metrics(state) for name in names},
        jit_compile=jit_compile,
    )
    return view


def fold_weights(
    folds: Folds, class_weight: dict[int, float] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each member's weight on each pooled row: in training, 1 / (k - 1) off its fold, times the row's class
    weight, so each member's share of the loss is what a member of an averaged ensemble gets; in validation, 1 on
    its fold (where it is scored) and 0 elsewhere."""
    rows, fold, names = folds.rows, folds.fold, member_names(folds.members)
    row_weight = np.ones(len(rows), dtype="float32")
    if class_weight:
        codes = np.asarray(rows.y).reshape(len(rows), -1)[:, 0].astype("int64")
        row_weight = np.array([class_weight.get(int(code), 1.0) for code in codes], dtype="float32")
    learns = {
        name: np.where(fold != index, row_weight / (len(names) - 1), 0).astype("float32")
        for index, name in enumerate(names)
    }
    scored = {name: (fold == index).astype("float32") for index, name in enumerate(names)}
    return learns, scored


def fold_datasets(
    folds: Folds, inputs: ModelInputs, batch_size: int, shuffle: bool, seed: int, class_weight: dict[int, float] | None
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training and the validation pipelines over the pooled rows: every row in both, each member's labels
    weighted by `fold_weights` (whether it learns from the row, or is scored on it)."""
    rows, names = folds.rows, member_names(folds.members)
    features = to_model_inputs(rows.x, inputs)
    labels = {name: rows.y for name in names}
    learns, scored = fold_weights(folds, class_weight)
    train = tf.data.Dataset.from_tensor_slices((features, labels, learns))
    if shuffle:
        train = train.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    val = tf.data.Dataset.from_tensor_slices((features, labels, scored))
    return (
        train.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        val.batch(batch_size).prefetch(tf.data.AUTOTUNE),
    )


def out_of_fold(folds: Folds, inputs: ModelInputs, batch_size: int = SCORING_BATCH) -> np.ndarray:
    """Each pooled row's output from the member that did not learn from it (what the threshold is chosen on)."""
    features = tf.data.Dataset.from_tensor_slices(to_model_inputs(folds.rows.x, inputs)).batch(batch_size)
    outputs: dict[str, Any] = folds.view.predict(features, verbose=0)
    stacked = np.stack([np.asarray(outputs[name]) for name in member_names(folds.members)])
    return stacked[folds.fold, np.arange(len(folds.fold))]


class MemberLogs(keras.callbacks.Callback):
    """Pools each member's metrics into the task's own (`member_0_accuracy`, `member_1_accuracy`, ... into
    `accuracy`; `val_member_0_accuracy`, ... into `val_accuracy`) and leaves the members' entries and own losses out
    of the epoch's logs, so the history, the training log, MLflow and early stopping see the loss, the metrics and
    their out-of-fold validation values, as for any model.

    Each member's metric is a weighted mean over the rows (Keras' weighted metrics), so pooling weighs it by the
    member's total weight: the validation value is then exactly the metric over every pooled row, each scored by
    the member that did not learn from it. An RMSE is pooled as the root of the pooled mean square. Keras calls
    callbacks in order with one logs dict, so this callback goes first (`training_callbacks`)."""

    def __init__(self, folds: Folds, class_weight: dict[int, float] | None) -> None:
        super().__init__()
        learns, scored = fold_weights(folds, class_weight)
        names = member_names(folds.members)
        self.totals = {
            "": [float(learns[name].sum()) for name in names],
            "val_": [float(scored[name].sum()) for name in names],
        }

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        for prefix, totals in self.totals.items():
            metrics = sorted(
                {
                    key.removeprefix(f"{prefix}member_0_")
                    for key in logs
                    if key.startswith(f"{prefix}member_0_") and key != f"{prefix}member_0_loss"
                }
            )
            for metric in metrics:
                values = [float(logs[f"{prefix}{name}_{metric}"]) for name in member_names(len(totals))]
                logs[f"{prefix}{metric}"] = pooled_metric(metric, values, totals)
        for name in [name for name in logs if name.removeprefix("val_").startswith("member_")]:
            del logs[name]


def pooled_metric(metric: str, values: list[float], weights: list[float]) -> float:
    """The metric over the union of the members' rows, from each member's weighted mean and total weight."""
    shares = np.asarray(weights, dtype="float64") / max(float(np.sum(weights)), 1e-12)
    values_array = np.asarray(values, dtype="float64")
    if metric == "rmse":
        return float(np.sqrt(np.sum(shares * values_array**2)))
    return float(np.sum(shares * values_array))
