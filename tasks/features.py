"""Model inputs: what each raw column is, and the Keras preprocessing layers that take it raw.

A dataset is either images (one array input) or columns: the numeric columns enter as one
matrix input and are imputed and normalized, each categorical column has a named input looked
up in a vocabulary, a text column one that is vectorized. The statistics and vocabularies are
fitted on the training rows only, in preprocess's streaming pass (`InputFitter`), then built into the
model with the constants given (no `adapt` over the data), so the saved model takes a raw DataFrame
row, image or string and nothing has to be pickled beside it.
Raw rows become model inputs through `kerasflow.model_interface.to_model_inputs`, everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import PreprocessParams
from kerasflow.model_interface import (
    CATEGORICAL,
    MISSING,
    NUMERIC,
    NUMERIC_INPUT,
    TEXT,
    InputColumn,
    ModelInputs,
    numbers,
    strings,
)
from kerasflow.records import FittedInputs, ImageScaling, NumericFit, RawDatasetInfo, TargetScaling, TextFit
from tasks.summaries import CategorySummary, NumericSummary, TableSummary, kind_of

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


def column_kinds(frame: pd.DataFrame) -> dict[str, str]:
    """numeric, bool or string per column of a frame (of the raw data's types)."""
    return {str(name): kind_of(frame[name].dtype) for name in frame.columns}


def describe_inputs(
    kinds: Mapping[str, str] | pd.DataFrame, info: RawDatasetInfo, params: PreprocessParams
) -> ModelInputs:
    """The model's inputs, from the raw columns' kinds (or a frame of them): images, or one entry per column."""
    if isinstance(kinds, pd.DataFrame):
        kinds = column_kinds(kinds)
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
        elif name in params.categorical_columns or kinds[name] == "string":
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
    summary = NumericSummary()
    summary.add(y_train)
    return scaling_of_target(summary, task, params)


def scaling_of_target(summary: NumericSummary, task: str, params: PreprocessParams) -> TargetScaling | None:
    if task != "regression" or not params.scale_target:
        return None
    return TargetScaling(mean=summary.mean, std=summary.std if summary.std > 0 else 1.0)


class PixelSummary:
    """Images so far, per pixel position: the moments for `standard` scaling, and the largest value."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | float = 0.0
        self.m2: np.ndarray | float = 0.0
        self.peak = 0.0

    def add(self, images: np.ndarray) -> None:
        images = np.asarray(images, dtype="float64")
        if not len(images):
            return
        count, mean = len(images), images.mean(axis=0)
        m2 = np.square(images - mean).sum(axis=0)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta * delta * self.count * count / total
        self.count = total
        self.peak = max(self.peak, float(np.abs(images).max()))

    def scaling(self, kind: str) -> ImageScaling:
        """Images divided by the training maximum (auto / max), standardized per pixel, or left alone."""
        kind = "max" if kind == "auto" else kind
        if kind == "max":
            return ImageScaling("max", scale=1.0 / (self.peak or 1.0))
        if kind == "standard":
            variance = np.asarray(self.m2) / max(self.count, 1)
            variance = np.where(variance > 0, variance, 1.0)
            return ImageScaling("standard", mean=np.ravel(self.mean).tolist(), variance=np.ravel(variance).tolist())
        return ImageScaling("none")


class InputFitter:
    """The constants of the input layers, fitted batch by batch on the training rows (`add`), then read once
    (`fitted`): each numeric column's fill (its mean) and normalization (mean and variance, once filled, or
    its largest absolute value), each categorical column's vocabulary (its most frequent values, as Keras'
    StringLookup orders them), the text column's vocabulary (Keras' own TextVectorization counting tokens
    batch by batch), image scaling, the regression target's scaling and the class counts.
    """

    def __init__(self, inputs: ModelInputs, params: PreprocessParams, task: str = "classification") -> None:
        self.inputs = inputs
        self.params = params
        self.task = task
        texts = tuple(entry.column for entry in inputs.columns if entry.kind == TEXT)
        self.columns = TableSummary(uncounted=texts)
        self.pixels = PixelSummary()
        self.target = NumericSummary()
        self.class_counts: np.ndarray = np.zeros(0, dtype=np.int64)
        self.text_layers: dict[str, Any] = {}

    def add(self, x: np.ndarray | pd.DataFrame, y: np.ndarray | None = None) -> None:
        if self.inputs.kind == "image":
            self.pixels.add(x)
        else:
            numeric = [entry.column for entry in self.inputs.numeric]
            categorical = [entry.column for entry in self.inputs.columns if entry.kind == CATEGORICAL]
            table = pd.DataFrame({name: numbers(x[name]) for name in numeric}, index=x.index)
            for name in categorical:
                table[name] = x[name].astype("string")
            self.columns.kinds.update({name: "numeric" for name in numeric} | {name: "string" for name in categorical})
            self.columns.add(table)
            for entry in self.inputs.columns:
                if entry.kind == TEXT:
                    self.text_layer(entry.input).update_state(strings(x[entry.column]))
        if y is not None and len(y):
            if self.task == "regression":
                self.target.add(y)
            else:
                counts = np.bincount(np.asarray(y, dtype=np.int64))
                size = max(len(counts), len(self.class_counts))
                self.class_counts = np.pad(self.class_counts, (0, size - len(self.class_counts))) + np.pad(
                    counts, (0, size - len(counts))
                )

    def text_layer(self, name: str) -> Any:
        if name not in self.text_layers:
            import keras

            settings = self.params.text
            self.text_layers[name] = keras.layers.TextVectorization(
                max_tokens=settings.max_tokens,
                output_sequence_length=settings.sequence_length,
                standardize=None if settings.standardize == "none" else settings.standardize,
            )
        return self.text_layers[name]

    def fitted(self) -> FittedInputs:
        target = scaling_of_target(self.target, self.task, self.params)
        if self.inputs.kind == "image":
            return FittedInputs(image_scaling=self.pixels.scaling(self.params.scaling), target=target)
        settings = self.params.text
        text = {}
        for entry in self.inputs.columns:
            if entry.kind == TEXT:
                layer = self.text_layer(entry.input)
                layer.finalize_state()
                vocabulary = [str(value) for value in layer.get_vocabulary()[2:]]
                text[entry.input] = TextFit(vocabulary, settings.sequence_length, settings.standardize)
        return FittedInputs(
            numeric={entry.column: self.numeric_fit(entry.column) for entry in self.inputs.numeric},
            categorical={
                entry.input: self.vocabulary(entry.column) for entry in self.inputs.columns if entry.kind == CATEGORICAL
            },
            text=text,
            categorical_encoding=self.params.categorical_encoding,
            target=target,
        )

    def numeric_fit(self, column: str) -> NumericFit:
        summary = self.columns.numeric.get(column) or NumericSummary()
        fill = summary.mean if summary.count else 0.0
        scaling = self.params.scaling
        if scaling in ("auto", "standard"):
            variance = summary.filled_variance
            # Constant columns keep variance 1 so the normalization divides by one, not zero.
            return NumericFit(fill, mean=fill, variance=variance if variance > 0 else 1.0)
        if scaling == "max":
            # Divide by the largest absolute value: a Normalization with mean 0 and variance max².
            peak = max(summary.peak, abs(fill))
            return NumericFit(fill, mean=0.0, variance=(peak if peak > 0 else 1.0) ** 2)
        return NumericFit(fill)

    def vocabulary(self, column: str) -> list[str]:
        """The column's most frequent values, missing ones counted as MISSING (as the lookup sees them)."""
        summary = self.columns.text.get(column) or CategorySummary()
        counts = dict(summary.counts)
        if summary.missing:
            counts[MISSING] = counts.get(MISSING, 0) + summary.missing
        return CategorySummary(counts=counts).most_frequent(self.params.max_categories)


def adapt_inputs(
    inputs: ModelInputs,
    x_train: np.ndarray | pd.DataFrame,
    params: PreprocessParams,
    target: TargetScaling | None = None,
) -> FittedInputs:
    """The input layers' constants from training rows held in memory (one batch of `InputFitter`)."""
    fitter = InputFitter(inputs, params)
    fitter.add(x_train)
    fitted = fitter.fitted()
    return replace(fitted, target=target) if target is not None else fitted


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
