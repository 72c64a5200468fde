"""Cross-fitting (`train.cross_fit`): k-fold bagging of the ensemble's members inside one model and one `fit`.

The training and validation rows are pooled and dealt into k folds (k = `model.ensemble`, stratified by class).
Member i learns from every fold but fold i, and fold i validates it: the validation loss early stopping watches is
each row's loss under the one member that did not learn from it (out of fold). So every labelled row outside the
test split both trains (k - 1 members) and validates (one), where a plain split keeps a tenth of the rows for
validation only. This is how AutoGluon bags its tabular networks; the out-of-fold outputs are scikit-learn's
`cross_val_predict`.

What is trained is a view of the model whose outputs are the members' own (`members_view`, the same layers and
weights); what is saved and served is the model itself, whose output averages the members. The view's
sample weights carry the folds (a member's weight is zero on its own fold) and any class weights.
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
from tasks.model import weighted_loss
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
    model's loss (and its weight) for each and the model's own optimizer (so the saved model holds the training
    state)."""
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
        jit_compile=jit_compile,
    )
    return view


def fold_datasets(
    folds: Folds, inputs: ModelInputs, batch_size: int, shuffle: bool, seed: int, class_weight: dict[int, float] | None
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training and the validation pipelines over the pooled rows: every row in both, each member's labels
    weighted by whether it learns from the row (training: 1 / (k - 1) off its fold, times the row's class weight,
    so each member's share of the loss is what a member of an averaged ensemble gets) or is scored on it
    (validation: 1 on its fold)."""
    rows, fold, names = folds.rows, folds.fold, member_names(folds.members)
    features = to_model_inputs(rows.x, inputs)
    labels = {name: rows.y for name in names}
    row_weight = np.ones(len(rows), dtype="float32")
    if class_weight:
        codes = np.asarray(rows.y).reshape(len(rows), -1)[:, 0].astype("int64")
        row_weight = np.array([class_weight.get(int(code), 1.0) for code in codes], dtype="float32")
    learns = {
        name: np.where(fold != index, row_weight / (len(names) - 1), 0).astype("float32")
        for index, name in enumerate(names)
    }
    scored = {name: (fold == index).astype("float32") for index, name in enumerate(names)}
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
    """Leaves each member's own loss out of the epoch's logs (`member_0_loss`, `val_member_0_loss`, ...), so the
    history, the training log and MLflow show the loss and the out-of-fold validation loss, as for any model."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for name in [name for name in logs or {} if name.removeprefix("val_").startswith("member_")]:
            del logs[name]  # type: ignore[union-attr]
