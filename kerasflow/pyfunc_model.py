"""The MLflow pyfunc wrapper of a kerasflow model, logged as "model from code".

MLflow copies this file into the logged model and runs it when the model is loaded
(`mlflow.pyfunc.load_model`, `mlflow models serve`), so it imports nothing from
kerasflow. All preprocessing lives in the Keras model; this wrapper only turns what a
caller sends (a DataFrame of raw columns, an image array, a list of strings) into the
model's named inputs, and names the outputs:

- classification: `label` (the predicted class, with `threshold` for two classes) and
  one `probability_<class>` column per class;
- regression: `prediction`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd


class KerasRawInputModel(mlflow.pyfunc.PythonModel):
    """Raw input in, labelled predictions out, around one `.keras` file loaded with safe_mode."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], safe_mode=True)
        self.config = dict(context.model_config or {})

    def _inputs(self, data: Any) -> Any:
        inputs = self.config["inputs"]
        if inputs["kind"] == "image":
            array = data.to_numpy() if isinstance(data, pd.DataFrame) else np.asarray(data)
            return array.astype("float32").reshape(len(array), *inputs["shape"])
        if not isinstance(data, pd.DataFrame):
            columns = [entry["column"] for entry in inputs["columns"]]
            data = pd.DataFrame(data, columns=columns) if not isinstance(data, dict) else pd.DataFrame(data)
        features: dict[str, Any] = {}
        for entry in inputs["columns"]:
            if entry["column"] not in data.columns:
                raise ValueError(f"input column {entry['column']!r} is missing; the model takes {list(data.columns)}")
            series = data[entry["column"]]
            if entry["kind"] == "numeric":
                numbers = pd.to_numeric(series, errors="coerce")
                broken = series[numbers.isna() & series.notna()]
                if len(broken):
                    raise ValueError(f"column {entry['column']!r} must be numeric, got {broken.head(3).tolist()}")
                values = numbers.to_numpy(dtype="float32", na_value=np.nan).reshape(-1, 1)
            else:
                values = series.astype("string").fillna("").to_numpy(dtype=object).astype(str).reshape(-1, 1)
            # Numeric columns share one input (a matrix, in column order); each string column has its own.
            features.setdefault(entry["input"], []).append(values)
        return {name: np.hstack(parts) for name, parts in features.items()}

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (MLflow reads type hints as a schema)
        import tensorflow as tf

        features = self._inputs(model_input)
        batches = tf.data.Dataset.from_tensor_slices(features).batch(256)
        # Called per batch, not through predict(): no tf.function is traced for a handful of rows.
        outputs = np.concatenate([np.asarray(self.model(batch, training=False)) for batch in batches])
        classes = self.config.get("classes")
        outputs = outputs.astype("float64")
        if not classes:
            return pd.DataFrame({"prediction": outputs.reshape(-1)})
        names = [str(label) for label in classes]
        if outputs.ndim == 1 or outputs.shape[1] == 1:
            positive = outputs.reshape(-1)
            probabilities = np.stack([1 - positive, positive], axis=1)
            predicted = (positive >= self.config.get("threshold", 0.5)).astype("int64")
        else:
            probabilities = outputs
            predicted = outputs.argmax(axis=1)
        frame = pd.DataFrame({"label": [names[index] for index in predicted]})
        for position, name in enumerate(names):
            frame[f"probability_{name}"] = probabilities[:, position]
        return frame


mlflow.models.set_model(KerasRawInputModel())
