"""The wide layer's fitted start (`model.wide_start: fitted`): wide and deep that begins as the linear model.

With `model.linear_skip`, the model's logits are the deep members' averaged output layers plus a linear layer
(`wide`) straight on the input features. Started at random, training has to find the linear part and the
nonlinear part at once, and on small, nearly linear tables it settles below a plain logistic regression or
ridge. The fitted start fits that linear model first, with scikit-learn, on the model's own input features of
(a seeded sample of) the training rows, sets it as the wide layer's weights, and zeroes the members' output
layers: before its first step the model *is* the linear model, and training (with the best epoch restored)
adds what the networks find beyond it. The same move as initialising a residual branch at zero.

Off by default, and not in `kerasflow init`'s recipe: on the quality benchmark it lost more than it gained
(bench/results/quality.md: diabetes -7.3 points of R², anes96 -1.0, the text set -0.4; breast_cancer +0.3).
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from kerasflow.records import PreprocessState
from tasks.datasets import predict
from tasks.preprocess import ParquetSplit, Split

logger = logging.getLogger(__name__)

# Training rows the linear model is fitted on at most (a seeded sample of a larger split).
FIT_ROWS = 50_000
# Below this share of nonzero values the features are handed to scikit-learn as a sparse matrix (a bag of words).
SPARSE_BELOW = 0.1


def start_wide_from_linear_fit(
    model: keras.Model,
    train: Split | ParquetSplit,
    state: PreprocessState,
    seed: int,
    class_weight: dict[int, float] | None = None,
) -> None:
    """Set `model`'s wide layer to a logistic regression (or ridge, for a regression) fitted on its input features
    of the training rows, and the deep members' output layers to zero."""
    from tasks.evaluate import baseline_sample

    wide = model.get_layer("wide")
    sample = baseline_sample(train, FIT_ROWS, seed, state.inputs)
    features = predict(keras.Model(model.inputs, wide.input), sample.x, state.inputs)
    kernel, bias = linear_fit(features, sample.y, state, seed, class_weight)
    wide.set_weights([kernel.astype("float32"), bias.astype("float32")])
    for layer in model.layers:
        if layer.name.startswith("logits_"):
            layer.set_weights([np.zeros_like(weight) for weight in layer.get_weights()])
    logger.info("wide layer started from a linear model fitted on %d training rows", len(sample.y))


def linear_fit(
    features: np.ndarray,
    y: np.ndarray,
    state: PreprocessState,
    seed: int,
    class_weight: dict[int, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The wide layer's kernel (features x output units) and bias: scikit-learn's LogisticRegression (with its
    default C=1, as the gate's baseline) on the class indexes, or Ridge (alpha=1) on the target in standard
    deviations, the units of the model's logits."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression, Ridge

    units = state.output_units
    x: Any = features
    if features.size and np.count_nonzero(features) < SPARSE_BELOW * features.size:
        x = sparse.csr_matrix(features)
    if state.task != "classification":
        target = state.fitted.target
        z = np.asarray(y, dtype="float64")
        if target:
            z = (z - target.mean) / target.std
        ridge = Ridge(alpha=1.0).fit(x, z)
        return ridge.coef_.reshape(-1, 1), np.atleast_1d(ridge.intercept_)
    labels = np.asarray(y).astype("int64")
    kernel = np.zeros((features.shape[1], units))
    bias = np.zeros(units)
    present = np.unique(labels)
    if len(present) < 2:
        return kernel, bias
    weights = {int(label): class_weight.get(int(label), 1.0) for label in present} if class_weight else None
    fitted = LogisticRegression(max_iter=2000, class_weight=weights, random_state=seed).fit(x, labels)
    if units == 1:
        return fitted.coef_.T, fitted.intercept_
    if len(fitted.classes_) == 2:
        # Only two of the classes in the sample: scikit-learn fits one logit, the second class's against the
        # first's zero, which softmax reads the same.
        kernel[:, fitted.classes_[1]] = fitted.coef_[0]
        bias[fitted.classes_[1]] = fitted.intercept_[0]
        return kernel, bias
    # Softmax logits: each class seen in the sample gets its column; an unseen class stays at zero.
    kernel[:, fitted.classes_] = fitted.coef_.T
    bias[fitted.classes_] = fitted.intercept_
    return kernel, bias
