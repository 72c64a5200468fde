"""What a kerasflow model takes and returns, and the one function that turns raw rows into its inputs.

Training, evaluation, batch scoring and the MLflow pyfunc wrapper all call `to_model_inputs` and
`prediction_frame`, so a value is read, and a prediction named, the same way wherever it comes
from. The logged MLflow model carries a copy of this file (the pyfunc wrapper loads it by path),
so it imports only NumPy and pandas, never the rest of kerasflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NUMERIC, CATEGORICAL, TEXT = "numeric", "categorical", "text"
IMAGE, COLUMNS = "image", "columns"
# All numeric columns enter the model side by side as one float32 matrix input of this name.
NUMERIC_INPUT = "numeric"
# What a missing categorical or text value becomes.
MISSING = ""


class ModelInputError(ValueError):
    """Raw input that does not fit the model's inputs; the message names the column and the row."""


@dataclass(frozen=True)
class InputColumn:
    """One raw column: its name in the data, the model input it feeds, and what kind of values it holds."""

    column: str
    input: str
    kind: str  # numeric | categorical | text


@dataclass(frozen=True)
class ModelInputs:
    """The model's raw inputs: an image tensor of `shape`, or named columns."""

    kind: str  # image | columns
    columns: tuple[InputColumn, ...] = ()
    shape: tuple[int, ...] = ()

    @classmethod
    def images(cls, shape: Any) -> ModelInputs:
        return cls(IMAGE, shape=tuple(int(size) for size in shape))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInputs:
        columns = tuple(InputColumn(**entry) for entry in data.get("columns", ()))
        return cls(data["kind"], columns, tuple(data.get("shape", ())))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == IMAGE:
            return {"kind": IMAGE, "shape": list(self.shape)}
        return {"kind": COLUMNS, "columns": [asdict(entry) for entry in self.columns]}

    @property
    def column_names(self) -> list[str]:
        return [entry.column for entry in self.columns]

    @property
    def numeric(self) -> list[InputColumn]:
        return [entry for entry in self.columns if entry.kind == NUMERIC]

    @property
    def strings(self) -> list[InputColumn]:
        """Categorical and text columns: each has a string input of its own."""
        return [entry for entry in self.columns if entry.kind != NUMERIC]


@dataclass(frozen=True)
class ModelConfig:
    """What the model file alone does not say: the task, the classes, the inputs and the decision threshold."""

    task: str  # classification | regression
    inputs: ModelInputs
    classes: list[Any] | None = None
    threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {"task", "inputs", "classes", "threshold"}
        return cls(
            task=data["task"],
            inputs=ModelInputs.from_dict(data["inputs"]),
            classes=data.get("classes"),
            threshold=float(data.get("threshold", 0.5)),
            extra={key: value for key, value in data.items() if key not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "inputs": self.inputs.to_dict(),
            "classes": self.classes,
            "threshold": self.threshold,
            **self.extra,
        }


def to_model_inputs(data: Any, inputs: ModelInputs) -> np.ndarray | dict[str, np.ndarray]:
    """Raw input to what the Keras model is called with.

    Images: an array (or a DataFrame of pixel columns) becomes float32 of shape (rows, *shape).
    Columns: a DataFrame (or records, or a dict of columns) becomes {input name: values}, the
    numeric columns side by side as one float32 matrix, each string column as (rows, 1). A
    number may arrive as a number or as text ("3.5"); a missing value (None, NaN, "") becomes
    NaN and the model imputes it. Text that is not a number in a numeric column is an error
    naming the column and the row, wherever the data comes from.
    """
    if inputs.kind == IMAGE:
        if isinstance(data, dict):  # a named tensor input, as MLflow passes {"image": array}
            data = data[IMAGE] if IMAGE in data else next(iter(data.values()))
        array = data.to_numpy() if isinstance(data, pd.DataFrame) else np.asarray(data)
        try:
            return array.astype("float32").reshape(len(array), *inputs.shape)
        except ValueError as error:
            raise ModelInputError(
                f"images of shape {array.shape[1:]} do not fit the model's input shape {inputs.shape}: {error}"
            ) from None
    frame = as_frame(data, inputs)
    missing = [name for name in inputs.column_names if name not in frame.columns]
    if missing:
        raise ModelInputError(f"input column(s) {missing} are missing; the model takes {inputs.column_names}")
    features: dict[str, np.ndarray] = {}
    numeric = [entry.column for entry in inputs.numeric]
    if numeric:
        table = frame[numeric]
        if all(
            pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) for dtype in table.dtypes
        ):
            # Numbers already: one pass to the float32 matrix (NaN where missing).
            features[NUMERIC_INPUT] = table.to_numpy(dtype="float32", na_value=np.nan)
        else:
            features[NUMERIC_INPUT] = np.column_stack([numbers(table[column]) for column in numeric]).astype("float32")
        check_finite(features[NUMERIC_INPUT], numeric, frame.index)
    for entry in inputs.strings:
        features[entry.input] = strings(frame[entry.column]).reshape(-1, 1)
    return features


def check_finite(matrix: np.ndarray, columns: list[str], index: pd.Index) -> None:
    """Infinite numbers, or numbers beyond float32's range (about 3.4e38, which become infinite), are a
    ModelInputError naming the column and the row: the model would answer NaN, or a confident label, for them."""
    infinite = np.isinf(matrix)
    if not infinite.any():
        return
    row, position = (int(found[0]) for found in np.nonzero(infinite))
    raise ModelInputError(
        f"column {columns[position]!r}, row {index[row]}: a number that is infinite or beyond float32's range "
        f"(about ±3.4e38), which the model cannot score ({int(infinite.sum())} such value(s) in the input)"
    )


def as_frame(data: Any, inputs: ModelInputs) -> pd.DataFrame:
    """A DataFrame of the raw columns from a DataFrame, a dict of columns, records or rows in column order."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict):
        return pd.DataFrame(data)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return pd.DataFrame.from_records(data)
    return pd.DataFrame(data, columns=inputs.column_names)


def numbers(series: pd.Series) -> np.ndarray:
    """A column as float64, NaN where a value is missing; text that is not a number is a ModelInputError."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    text = series.astype("string").str.strip()
    parsed = pd.to_numeric(text.replace("", pd.NA), errors="coerce")
    broken = parsed.isna() & text.notna() & (text != "")
    if broken.any():
        row = broken.to_numpy().nonzero()[0][0]
        raise ModelInputError(
            f"column {series.name!r}, row {series.index[row]}: {series.iloc[row]!r} is not a number "
            f"({int(broken.sum())} such value(s) in the column)"
        )
    return parsed.to_numpy(dtype="float64", na_value=np.nan)


def strings(series: pd.Series) -> np.ndarray:
    """A column as Python strings, MISSING where a value is missing."""
    return series.astype("string").fillna(MISSING).to_numpy(dtype=object).astype(str)


def positive_share(outputs: np.ndarray) -> np.ndarray | None:
    """The positive class's probability of a binary model's single sigmoid output, else None."""
    outputs = np.asarray(outputs)
    return outputs.reshape(-1) if outputs.ndim == 1 or outputs.shape[1] == 1 else None


def predicted_classes(outputs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class indices from model outputs: the threshold on a single sigmoid, else the most probable class."""
    positive = positive_share(outputs)
    if positive is not None:
        return (positive >= threshold).astype("int64")
    return np.asarray(outputs).argmax(axis=1)


def prediction_frame(outputs: np.ndarray, config: ModelConfig) -> pd.DataFrame:
    """Model outputs as named columns: `label` and `probability_<class>` for a classifier, else `prediction`."""
    outputs = np.asarray(outputs, dtype="float64")
    if not config.classes:
        return pd.DataFrame({"prediction": outputs.reshape(-1)})
    positive = positive_share(outputs)
    probabilities = np.stack([1 - positive, positive], axis=1) if positive is not None else outputs
    labels = pd.Series(config.classes).iloc[predicted_classes(outputs, config.threshold)].reset_index(drop=True)
    frame = pd.DataFrame({"label": labels})
    for position, label in enumerate(config.classes):
        frame[f"probability_{label}"] = probabilities[:, position]
    return frame


def model_outputs(frame: pd.DataFrame, config: ModelConfig) -> np.ndarray:
    """`prediction_frame` backwards: the Keras model's output array (probabilities or values)."""
    if not config.classes:
        return frame["prediction"].to_numpy(dtype="float32").reshape(-1, 1)
    values = frame[[f"probability_{label}" for label in config.classes]].to_numpy(dtype="float32")
    # A binary model has one sigmoid unit: the positive (second) class's probability.
    return values[:, 1:] if len(config.classes) == 2 else values
