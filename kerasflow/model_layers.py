"""Keras layers of kerasflow's own, for `model.layers` (their params names are in kerasflow/layers.py).

This file travels with every logged model, as model_interface.py does: the pyfunc wrapper loads it before the
`.keras` file, so a model that uses one of these layers loads (with safe_mode) where kerasflow is not installed.
It imports only Keras and NumPy.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="kerasflow")
class ObliviousTrees(keras.layers.Layer):
    """Differentiable oblivious decision trees, as NODE (Popov et al., "Neural Oblivious Decision Ensembles for
    Deep Learning on Tabular Data", ICLR 2020).

    Each of `trees` trees asks the same question of every row at each of its `depth` levels: is a feature (a
    softmax-weighted choice among the inputs, learned) above a threshold (learned, with a learned sharpness)? The
    answers are soft (a sigmoid), so a row reaches each of the 2^depth leaves with a probability, and the tree
    returns its leaves' `units` responses weighted by those probabilities. The layer outputs the mean over the
    trees: a vector of `units` per row, like a dense layer's. Where a dense layer bends a response smoothly, a
    tree cuts it at thresholds of single features, as gradient-boosted trees do.
    """

    def __init__(self, trees: int = 64, depth: int = 6, units: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(trees, int) and trees >= 1):
            raise ValueError(f"trees must be a whole number of at least 1, not {trees!r}")
        if not (isinstance(depth, int) and 1 <= depth <= 10):
            raise ValueError(f"depth must be a whole number from 1 to 10 (2^depth leaves a tree), not {depth!r}")
        if not (isinstance(units, int) and units >= 1):
            raise ValueError(f"units must be a whole number of at least 1, not {units!r}")
        self.trees, self.depth, self.units = trees, depth, units
        # Leaf l goes right at level d when bit d of l is set: leaf log-probabilities are a matrix product away.
        bits = np.array([[(leaf >> level) & 1 for leaf in range(2**depth)] for level in range(depth)], "float32")
        self.right, self.left = bits, 1.0 - bits

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        features = int(input_shape[-1])
        shape = (self.trees, self.depth)
        # Which feature each level asks about: softmax over the features of these logits.
        self.selection = self.add_weight(
            shape=(features, *shape), initializer=keras.initializers.RandomUniform(0.0, 1.0), name="selection"
        )
        # Inputs are scaled (standardized, or pieces in [0, 1]), so thresholds start among their values.
        self.thresholds = self.add_weight(
            shape=shape, initializer=keras.initializers.RandomNormal(0.0, 1.0), name="thresholds"
        )
        # The sharpness of each question: the sigmoid's input is (value - threshold) / exp(log_scale).
        self.log_scale = self.add_weight(shape=shape, initializer="zeros", name="log_scale")
        self.response = self.add_weight(
            shape=(self.trees, 2**self.depth, self.units),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            name="response",
        )

    def call(self, inputs: Any) -> Any:
        chosen = ops.einsum("bf,ftd->btd", inputs, ops.softmax(self.selection, axis=0))
        margin = (chosen - self.thresholds) * ops.exp(-self.log_scale)
        # log P(leaf) = sum over levels of log P(right) or log P(left), as the leaf's bits say.
        right, left = ops.cast(self.right, margin.dtype), ops.cast(self.left, margin.dtype)
        log_leaf = ops.einsum("btd,dl->btl", ops.log_sigmoid(margin), right) + ops.einsum(
            "btd,dl->btl", ops.log_sigmoid(-margin), left
        )
        return ops.einsum("btl,tlu->bu", ops.exp(log_leaf), self.response) / self.trees

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "trees": self.trees, "depth": self.depth, "units": self.units}
