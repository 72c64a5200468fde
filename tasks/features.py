"""Model inputs: what each raw column is, and the Keras preprocessing layers that take it raw.

A dataset is either images (one array input) or columns: the numeric columns enter as one
matrix input and are imputed and normalized, each categorical column has a named input looked
up in a vocabulary, a text column one that is vectorized. The statistics and vocabularies are
fitted with each layer's `adapt` on the training split only, then built into the model, so the
saved model takes a raw DataFrame row, image or string and nothing has to be pickled beside it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import PreprocessParams

NUMERIC, CATEGORICAL, TEXT = "numeric", "categorical", "text"
# Names of layers the model adds itself: a column named like one gets a different input name.
RESERVED_NAMES = frozenset(
    {"image", "numeric", "output", "scaling", "features", "categories", "numeric_columns", "target_scaling", "backbone"}
)
# All numeric columns go into the model as one matrix input (one tensor per batch, not one per column).
NUMERIC_INPUT = "numeric"
# What a missing categorical or text value becomes (the pyfunc wrapper fills the same way).
MISSING = ""


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


def describe_inputs(frame: pd.DataFrame, meta: dict[str, Any], params: PreprocessParams) -> dict[str, Any]:
    """The model's inputs, from the raw columns: images, or one entry per column with its kind."""
    features = meta["feature_columns"]
    text_column = meta.get("text_column")
    if meta.get("image_shape") and not text_column:
        return {"kind": "image", "shape": list(meta["image_shape"])}
    unknown = [name for name in params.categorical_columns if name not in features]
    if unknown:
        raise ValueError(
            f"preprocess.categorical_columns names {unknown}, which are not feature columns {features[:20]}"
        )
    taken: set[str] = set(RESERVED_NAMES)
    columns = []
    for name in features:
        column = frame[name]
        if name == text_column:
            kind = TEXT
        elif name in params.categorical_columns or not pd.api.types.is_numeric_dtype(column):
            kind = CATEGORICAL
        else:
            kind = NUMERIC  # booleans too, as 0 / 1
        model_input = NUMERIC_INPUT if kind == NUMERIC else input_name(name, taken)
        columns.append({"column": name, "input": model_input, "kind": kind})
    if sum(entry["kind"] == TEXT for entry in columns) > 1:
        raise ValueError("only one text column is supported")
    return {"kind": "columns", "columns": columns}


def feature_matrix(frame: pd.DataFrame, meta: dict[str, Any], inputs: dict[str, Any]) -> np.ndarray | pd.DataFrame:
    """The raw features of a frame: an image array, or the feature columns as they are."""
    if inputs["kind"] == "image":
        x = frame[meta["feature_columns"]].to_numpy(dtype="float32")
        return x.reshape(len(x), *inputs["shape"])
    return frame[[entry["column"] for entry in inputs["columns"]]].reset_index(drop=True)


def column_values(series: pd.Series, kind: str) -> np.ndarray:
    """One column as the model takes it: float32 with NaN for numbers, strings otherwise; shape (rows, 1)."""
    if kind == NUMERIC:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float32", na_value=np.nan)
    else:
        values = series.astype("string").fillna(MISSING).to_numpy(dtype=object).astype(str)
    return values.reshape(-1, 1)


def model_inputs(x: np.ndarray | pd.DataFrame, inputs: dict[str, Any]) -> np.ndarray | dict[str, np.ndarray]:
    """Raw features to what the Keras model is called with: the image array, or {input name: values}
    (the numeric columns side by side as one float32 matrix, each string column as (rows, 1))."""
    if inputs["kind"] == "image":
        return np.asarray(x, dtype="float32")
    features: dict[str, np.ndarray] = {}
    numeric = [entry["column"] for entry in inputs["columns"] if entry["kind"] == NUMERIC]
    if numeric:
        features[NUMERIC_INPUT] = numeric_matrix(x, numeric)
    for entry in inputs["columns"]:
        if entry["kind"] != NUMERIC:
            features[entry["input"]] = column_values(x[entry["column"]], entry["kind"])
    return features


def numeric_matrix(x: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Numeric columns as one float32 matrix, NaN where a value is missing."""
    table = x[columns]
    if not all(pd.api.types.is_numeric_dtype(table[column]) for column in columns):
        table = table.apply(pd.to_numeric, errors="coerce")
    return table.to_numpy(dtype="float32", na_value=np.nan)


def raw_example(x: np.ndarray | pd.DataFrame, inputs: dict[str, Any], rows: int = 5) -> np.ndarray | pd.DataFrame:
    """A few raw rows as a caller would send them (the MLflow input example and signature).

    Numeric columns are float64, so a missing value at prediction time still fits the signature.
    """
    if inputs["kind"] == "image":
        return np.asarray(x[:rows], dtype="float32")
    frame = x.head(rows).copy()
    for entry in inputs["columns"]:
        column = entry["column"]
        if entry["kind"] == NUMERIC:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        else:
            frame[column] = frame[column].astype("string").fillna(MISSING).astype(object)
    return frame


def target_scaling(y_train: np.ndarray, task: str, params: PreprocessParams) -> dict[str, float] | None:
    """Mean and standard deviation of a regression target (training split), or None."""
    if task != "regression" or not params.scale_target:
        return None
    std = float(np.std(y_train))
    return {"mean": float(np.mean(y_train)), "std": std if std > 0 else 1.0}


def adapt_inputs(
    inputs: dict[str, Any], x_train: np.ndarray | pd.DataFrame, params: PreprocessParams
) -> dict[str, Any]:
    """Fit the preprocessing layers with `adapt` on the training split; return their constants (JSON-able)."""
    import keras

    if inputs["kind"] == "image":
        kind = "max" if params.scaling == "auto" else params.scaling
        if kind == "max":
            return {"scaling": {"kind": "max", "scale": 1.0 / (float(np.abs(x_train).max()) or 1.0)}}
        if kind == "standard":
            axes = tuple(range(1, x_train.ndim))
            layer = keras.layers.Normalization(axis=axes)
            layer.adapt(x_train)
            return {"scaling": _normalization_constants(layer)}
        return {"scaling": {"kind": "none"}}

    fitted: dict[str, Any] = {"numeric": {}, "categorical": {}, "text": {}}
    numeric = [entry for entry in inputs["columns"] if entry["kind"] == NUMERIC]
    if numeric:
        # One Normalization adapted over every numeric column at once (one pass over the data).
        matrix = numeric_matrix(x_train, [entry["column"] for entry in numeric])
        fill = np.nan_to_num(np.nanmean(matrix, axis=0), nan=0.0) if len(matrix) else np.zeros(len(numeric))
        matrix = np.where(np.isnan(matrix), fill, matrix)
        constants: dict[str, Any] = {"kind": "none"}
        if params.scaling in ("auto", "standard"):
            layer = keras.layers.Normalization(axis=-1)
            layer.adapt(matrix)
            constants = _normalization_constants(layer)
        elif params.scaling == "max":
            # Divide by the largest absolute value: a Normalization with mean 0 and variance max².
            peak = np.abs(matrix).max(axis=0) if len(matrix) else np.ones(len(numeric))
            peak = np.where(peak > 0, peak, 1.0)
            constants = {"kind": "standard", "mean": [0.0] * len(numeric), "variance": (peak**2).tolist()}
        for position, entry in enumerate(numeric):
            fitted["numeric"][entry["column"]] = {"fill": float(fill[position]), "kind": constants["kind"]}
            if constants["kind"] == "standard":
                fitted["numeric"][entry["column"]].update(
                    mean=[constants["mean"][position]], variance=[constants["variance"][position]]
                )
    for entry in inputs["columns"]:
        if entry["kind"] == NUMERIC:
            continue  # adapted above, all at once
        values = column_values(x_train[entry["column"]], entry["kind"])
        if entry["kind"] == CATEGORICAL:
            layer = keras.layers.StringLookup(max_tokens=params.max_categories + 1, num_oov_indices=1)
            layer.adapt(values)
            fitted["categorical"][entry["input"]] = {"vocabulary": [str(v) for v in layer.get_vocabulary()[1:]]}
        else:
            text = params.text
            layer = keras.layers.TextVectorization(
                max_tokens=text.max_tokens,
                output_sequence_length=text.sequence_length,
                standardize=None if text.standardize == "none" else text.standardize,
            )
            layer.adapt(values.reshape(-1))
            fitted["text"][entry["input"]] = {
                # The padding ("") and out-of-vocabulary tokens come first; the layer adds them back itself.
                "vocabulary": [str(v) for v in layer.get_vocabulary()[2:]],
                "sequence_length": text.sequence_length,
                "standardize": text.standardize,
            }
    fitted["categorical_encoding"] = params.categorical_encoding
    return fitted


def _normalization_constants(layer: Any) -> dict[str, Any]:
    mean = np.asarray(layer.mean, dtype="float64").reshape(-1)
    variance = np.asarray(layer.variance, dtype="float64").reshape(-1)
    # Constant columns keep variance 1 so the normalization divides by one, not zero.
    variance = np.where(variance > 0, variance, 1.0)
    return {"kind": "standard", "mean": mean.tolist(), "variance": variance.tolist()}


def input_graph(inputs: dict[str, Any], fitted: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The model's raw inputs and the named tensors a spec can start from.

    Returns (Keras inputs, tensors): tensors always has `input` (what a sequential spec
    starts from) and, where the data has them, `image`, `numeric`, `categorical`, `text`
    and `features` (numeric and one-hot categories side by side).
    """
    import keras
    from keras import layers, ops

    if inputs["kind"] == "image":
        image = keras.Input(shape=tuple(inputs["shape"]), name="image")
        scaled = _image_scaling(fitted.get("scaling"), tuple(inputs["shape"]))
        tensor = scaled(image) if scaled else image
        return image, {"input": tensor, "image": tensor}

    model_inputs: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    numeric_fit = [fitted["numeric"][entry["column"]] for entry in inputs["columns"] if entry["kind"] == NUMERIC]
    categorical = []
    text = None
    if numeric_fit:
        model_inputs[NUMERIC_INPUT] = keras.Input(shape=(len(numeric_fit),), dtype="float32", name=NUMERIC_INPUT)
    for entry in inputs["columns"]:
        name, kind = entry["input"], entry["kind"]
        if kind == NUMERIC:
            continue
        model_inputs[name] = keras.Input(shape=(1,), dtype="string", name=name)
        if kind == CATEGORICAL:
            vocabulary = fitted["categorical"][name]["vocabulary"]
            one_hot = fitted["categorical_encoding"] == "one_hot"
            lookup = layers.StringLookup(
                vocabulary=vocabulary,
                num_oov_indices=1,
                output_mode="one_hot" if one_hot else "int",
                name=f"lookup_{name}",
            )
            encoded = lookup(model_inputs[name])
            categorical.append(ops.cast(encoded, "float32") if one_hot else encoded)
        else:
            spec = fitted["text"][name]
            vectorize = layers.TextVectorization(
                vocabulary=spec["vocabulary"],
                output_sequence_length=spec["sequence_length"],
                standardize=None if spec["standardize"] == "none" else spec["standardize"],
                name=f"vectorize_{name}",
            )
            text = vectorize(model_inputs[name])
            tensors["text"] = text
    if numeric_fit:
        joined = model_inputs[NUMERIC_INPUT]
        fill = np.array([entry["fill"] for entry in numeric_fit], dtype="float32")
        # Missing numbers become the training split's mean (an op in the graph, so it is saved with the model).
        joined = ops.where(ops.isnan(joined), fill, joined)
        if all(entry["kind"] == "standard" for entry in numeric_fit):
            mean = np.array([entry["mean"][0] for entry in numeric_fit], dtype="float32")
            variance = np.array([entry["variance"][0] for entry in numeric_fit], dtype="float32")
            joined = layers.Normalization(mean=mean, variance=variance, name="scaling")(joined)
        tensors["numeric"] = joined
    if categorical:
        tensors["categorical"] = (
            categorical[0] if len(categorical) == 1 else layers.Concatenate(name="categories")(categorical)
        )
    float_parts = [tensors[name] for name in ("numeric",) if name in tensors]
    if "categorical" in tensors and fitted["categorical_encoding"] == "one_hot":
        float_parts.append(tensors["categorical"])
    if float_parts:
        tensors["features"] = (
            float_parts[0] if len(float_parts) == 1 else layers.Concatenate(name="features")(float_parts)
        )
    tensors["input"] = text if text is not None else tensors.get("features", tensors.get("categorical"))
    return model_inputs, tensors


def _image_scaling(scaling: dict[str, Any] | None, shape: tuple[int, ...]) -> Any:
    from keras import layers

    if not scaling or scaling["kind"] == "none":
        return None
    if scaling["kind"] == "max":
        return layers.Rescaling(scaling["scale"], name="scaling")
    mean = np.asarray(scaling["mean"], dtype="float32").reshape(shape)
    variance = np.asarray(scaling["variance"], dtype="float32").reshape(shape)
    axes = tuple(range(1, len(shape) + 1))
    return layers.Normalization(axis=axes, mean=mean, variance=variance, name="scaling")


def vocabulary_size(fitted: dict[str, Any], source: str = "input") -> int | None:
    """The input_dim an embedding of `source` needs: the text vocabulary (with padding and OOV), or
    the largest categorical vocabulary (with OOV) for the `categorical` tensor or data without text."""
    text = [len(spec["vocabulary"]) + 2 for spec in fitted.get("text", {}).values()]
    categories = [len(spec["vocabulary"]) + 1 for spec in fitted.get("categorical", {}).values()]
    if source == "categorical" or not text:
        return max(categories) if categories else None
    return text[0]
