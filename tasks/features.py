"""Model inputs: what each raw column is, and the Keras preprocessing layers that take it raw.

A dataset is either images (one array input) or columns: the numeric columns enter as one
matrix input and are imputed and normalized, each categorical column has a named input looked
up in a vocabulary, a text column one that is vectorized. The statistics and vocabularies are
fitted with each layer's `adapt` on the training split only, then built into the model, so the
saved model takes a raw DataFrame row, image or string and nothing has to be pickled beside it.
Raw rows become model inputs through `kerasflow.model_interface.to_model_inputs`, everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import PreprocessParams
from kerasflow.model_interface import (
    CATEGORICAL,
    NUMERIC,
    NUMERIC_INPUT,
    TEXT,
    InputColumn,
    ModelInputs,
    numbers,
    strings,
)
from kerasflow.records import FittedInputs, ImageScaling, NumericFit, RawDatasetInfo, TargetScaling, TextFit

# Names of layers the model adds itself: a column named like one gets a different input name.
RESERVED_NAMES = frozenset(
    {"image", "numeric", "output", "scaling", "features", "categories", "numeric_columns", "target_scaling", "backbone"}
)


def input_name(column: str, taken: set[str]) -> str:
    """A Keras / TensorFlow-safe input name for a column (SavedModel signatures allow few characters)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(column))
    if not name or not name[0].isalnum():
        name = f"c_{name}"
    candidate, suffix = name, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{name}_{suffix}"
    taken.add(candidate)
    return candidate


def describe_inputs(frame: pd.DataFrame, info: RawDatasetInfo, params: PreprocessParams) -> ModelInputs:
    """The model's inputs, from the raw columns: images, or one entry per column with its kind."""
    features = info.feature_columns
    if info.image_shape and not info.text_column:
        return ModelInputs.images(info.image_shape)
    unknown = [name for name in params.categorical_columns if name not in features]
    if unknown:
        raise ValueError(
            f"preprocess.categorical_columns names {unknown}, which are not feature columns {features[:20]}"
        )
    taken: set[str] = set(RESERVED_NAMES)
    columns = []
    for name in features:
        if name == info.text_column:
            kind = TEXT
        elif name in params.categorical_columns or not pd.api.types.is_numeric_dtype(frame[name]):
            kind = CATEGORICAL
        else:
            kind = NUMERIC  # booleans too, as 0 / 1
        columns.append(InputColumn(name, NUMERIC_INPUT if kind == NUMERIC else input_name(name, taken), kind))
    if sum(entry.kind == TEXT for entry in columns) > 1:
        raise ValueError("only one text column is supported")
    return ModelInputs("columns", tuple(columns))


def feature_matrix(frame: pd.DataFrame, info: RawDatasetInfo, inputs: ModelInputs) -> np.ndarray | pd.DataFrame:
    """The raw features of a frame: an image array, or the feature columns as they are."""
    if inputs.kind == "image":
        x = frame[info.feature_columns].to_numpy(dtype="float32")
        return x.reshape(len(x), *inputs.shape)
    return frame[inputs.column_names].reset_index(drop=True)


def raw_example(x: np.ndarray | pd.DataFrame, inputs: ModelInputs, rows: int = 5) -> np.ndarray | pd.DataFrame:
    """A few raw rows as a caller would send them (the MLflow input example and signature).

    Numeric columns are float64 (the signature's `double`), so a missing value still fits.
    """
    if inputs.kind == "image":
        return np.asarray(x[:rows], dtype="float32")
    frame = x.head(rows).copy()
    for entry in inputs.columns:
        if entry.kind == NUMERIC:
            frame[entry.column] = numbers(frame[entry.column])
        else:
            frame[entry.column] = strings(frame[entry.column]).astype(object)
    return frame


def target_scaling(y_train: np.ndarray, task: str, params: PreprocessParams) -> TargetScaling | None:
    """Mean and standard deviation of a regression target (training split), or None."""
    if task != "regression" or not params.scale_target:
        return None
    std = float(np.std(y_train))
    return TargetScaling(mean=float(np.mean(y_train)), std=std if std > 0 else 1.0)


def adapt_inputs(
    inputs: ModelInputs,
    x_train: np.ndarray | pd.DataFrame,
    params: PreprocessParams,
    target: TargetScaling | None = None,
) -> FittedInputs:
    """Fit the preprocessing layers with `adapt` on the training split; return their constants."""
    if inputs.kind == "image":
        return FittedInputs(image_scaling=adapt_image_scaling(x_train, params.scaling), target=target)
    text = {entry.input: adapt_text(x_train[entry.column], params) for entry in inputs.columns if entry.kind == TEXT}
    categorical = {
        entry.input: adapt_vocabulary(x_train[entry.column], params.max_categories)
        for entry in inputs.columns
        if entry.kind == CATEGORICAL
    }
    return FittedInputs(
        numeric=adapt_numeric(x_train, inputs.numeric, params.scaling),
        categorical=categorical,
        text=text,
        categorical_encoding=params.categorical_encoding,
        target=target,
    )


def adapt_image_scaling(images: np.ndarray, scaling: str) -> ImageScaling:
    """Images divided by the training maximum (auto / max), standardized per pixel, or left alone."""
    import keras

    kind = "max" if scaling == "auto" else scaling
    if kind == "max":
        return ImageScaling("max", scale=1.0 / (float(np.abs(images).max()) or 1.0))
    if kind == "standard":
        layer = keras.layers.Normalization(axis=tuple(range(1, images.ndim)))
        layer.adapt(images)
        mean, variance = _normalization_constants(layer)
        return ImageScaling("standard", mean=mean.tolist(), variance=variance.tolist())
    return ImageScaling("none")


def adapt_numeric(x_train: pd.DataFrame, columns: list[InputColumn], scaling: str) -> dict[str, NumericFit]:
    """Each numeric column's fill (the training mean) and normalization, adapted over all of them at once."""
    import keras

    if not columns:
        return {}
    matrix = np.column_stack([numbers(x_train[entry.column]) for entry in columns]).astype("float32")
    fill = np.nan_to_num(np.nanmean(matrix, axis=0), nan=0.0) if len(matrix) else np.zeros(len(columns))
    matrix = np.where(np.isnan(matrix), fill, matrix)
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None
    if scaling in ("auto", "standard"):
        layer = keras.layers.Normalization(axis=-1)
        layer.adapt(matrix)
        mean, variance = _normalization_constants(layer)
    elif scaling == "max":
        # Divide by the largest absolute value: a Normalization with mean 0 and variance max².
        peak = np.abs(matrix).max(axis=0) if len(matrix) else np.ones(len(columns))
        mean, variance = np.zeros(len(columns)), np.where(peak > 0, peak, 1.0) ** 2
    return {
        entry.column: NumericFit(
            fill=float(fill[position]),
            mean=None if mean is None else float(mean[position]),
            variance=None if variance is None else float(variance[position]),
        )
        for position, entry in enumerate(columns)
    }


def adapt_vocabulary(column: pd.Series, max_categories: int) -> list[str]:
    """The column's most frequent values (missing ones count as MISSING), without the OOV token."""
    import keras

    layer = keras.layers.StringLookup(max_tokens=max_categories + 1, num_oov_indices=1)
    layer.adapt(strings(column).reshape(-1, 1))
    return [str(value) for value in layer.get_vocabulary()[1:]]


def adapt_text(column: pd.Series, params: PreprocessParams) -> TextFit:
    """The text column's vocabulary, without the padding ("") and OOV tokens the layer adds back itself."""
    import keras

    settings = params.text
    layer = keras.layers.TextVectorization(
        max_tokens=settings.max_tokens,
        output_sequence_length=settings.sequence_length,
        standardize=None if settings.standardize == "none" else settings.standardize,
    )
    layer.adapt(strings(column))
    return TextFit([str(value) for value in layer.get_vocabulary()[2:]], settings.sequence_length, settings.standardize)


def _normalization_constants(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(layer.mean, dtype="float64").reshape(-1)
    variance = np.asarray(layer.variance, dtype="float64").reshape(-1)
    # Constant columns keep variance 1 so the normalization divides by one, not zero.
    return mean, np.where(variance > 0, variance, 1.0)


def input_graph(inputs: ModelInputs, fitted: FittedInputs) -> tuple[Any, dict[str, Any]]:
    """The model's raw inputs and the named tensors a spec can start from.

    Returns (Keras inputs, tensors): tensors always has `input` (what a sequential spec
    starts from) and, where the data has them, `image`, `numeric`, `categorical`, `text`
    and `features` (numeric and one-hot categories side by side).
    """
    import keras

    if inputs.kind == "image":
        image = keras.Input(shape=inputs.shape, name="image")
        scaled = image_scaling_layer(fitted.image_scaling, inputs.shape)
        tensor = scaled(image) if scaled else image
        return image, {"input": tensor, "image": tensor}

    model_inputs: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    if inputs.numeric:
        model_inputs[NUMERIC_INPUT] = keras.Input(shape=(len(inputs.numeric),), dtype="float32", name=NUMERIC_INPUT)
        tensors["numeric"] = numeric_branch(
            model_inputs[NUMERIC_INPUT], [fitted.numeric[e.column] for e in inputs.numeric]
        )
    categories = []
    for entry in inputs.strings:
        model_inputs[entry.input] = keras.Input(shape=(1,), dtype="string", name=entry.input)
        if entry.kind == CATEGORICAL:
            categories.append(category_branch(model_inputs[entry.input], entry.input, fitted))
        else:
            tensors["text"] = text_branch(model_inputs[entry.input], entry.input, fitted.text[entry.input])
    if categories:
        tensors["categorical"] = concatenate(categories, "categories")
    float_parts = [tensors["numeric"]] if "numeric" in tensors else []
    if categories and fitted.categorical_encoding == "one_hot":
        float_parts.append(tensors["categorical"])
    if float_parts:
        tensors["features"] = concatenate(float_parts, "features")
    tensors["input"] = tensors.get("text", tensors.get("features", tensors.get("categorical")))
    return model_inputs, tensors


def numeric_branch(matrix: Any, fits: list[NumericFit]) -> Any:
    """Missing numbers become the training mean (an op in the graph, saved with the model), then normalized."""
    from keras import layers, ops

    fill = np.array([fit.fill for fit in fits], dtype="float32")
    tensor = ops.where(ops.isnan(matrix), fill, matrix)
    if all(fit.mean is not None for fit in fits):
        mean = np.array([fit.mean for fit in fits], dtype="float32")
        variance = np.array([fit.variance for fit in fits], dtype="float32")
        tensor = layers.Normalization(mean=mean, variance=variance, name="scaling")(tensor)
    return tensor


def category_branch(column: Any, name: str, fitted: FittedInputs) -> Any:
    """A string column looked up in its vocabulary: one-hot floats, or integer ids for an embedding."""
    from keras import layers, ops

    one_hot = fitted.categorical_encoding == "one_hot"
    lookup = layers.StringLookup(
        vocabulary=fitted.categorical[name],
        num_oov_indices=1,
        output_mode="one_hot" if one_hot else "int",
        name=f"lookup_{name}",
    )
    encoded = lookup(column)
    return ops.cast(encoded, "float32") if one_hot else encoded


def text_branch(column: Any, name: str, fit: TextFit) -> Any:
    """Free text to token ids with the adapted vocabulary."""
    from keras import layers

    vectorize = layers.TextVectorization(
        vocabulary=fit.vocabulary,
        output_sequence_length=fit.sequence_length,
        standardize=None if fit.standardize == "none" else fit.standardize,
        name=f"vectorize_{name}",
    )
    return vectorize(column)


def concatenate(tensors: list[Any], name: str) -> Any:
    from keras import layers

    return tensors[0] if len(tensors) == 1 else layers.Concatenate(name=name)(tensors)


def image_scaling_layer(scaling: ImageScaling | None, shape: tuple[int, ...]) -> Any:
    from keras import layers

    if scaling is None or scaling.kind == "none":
        return None
    if scaling.kind == "max":
        return layers.Rescaling(scaling.scale, name="scaling")
    mean = np.asarray(scaling.mean, dtype="float32").reshape(shape)
    variance = np.asarray(scaling.variance, dtype="float32").reshape(shape)
    return layers.Normalization(axis=tuple(range(1, len(shape) + 1)), mean=mean, variance=variance, name="scaling")
