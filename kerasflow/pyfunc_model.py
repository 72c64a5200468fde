"""The MLflow pyfunc wrapper of a kerasflow model, logged as "model from code".

MLflow copies this file into the logged model and runs it when the model is loaded
(`mlflow.pyfunc.load_model`, `mlflow models serve`), so it imports nothing from an installed
kerasflow. All preprocessing lives in the Keras model; raw input (a DataFrame of raw columns,
an image array, records) becomes the model's inputs through the copy of
`kerasflow/model_interface.py` logged with the model: the same code training used, loaded
from the model's own files, so every registered version keeps the conversion it was trained
with. Outputs:

- classification: `label` (the predicted class, with `threshold` for two classes) and
  one `probability_<class>` column per class;
- regression: `prediction`.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from typing import Any

import mlflow
import numpy as np
import pandas as pd

# Up to this many rows (a served request) the model runs eagerly; more (batch scoring) go through its
# compiled predict step, this many rows at a time.
EAGER_ROWS = 2048
PREDICT_BATCH = 65536


def load_interface(path: str, kind: str = "model_interface") -> Any:
    """The model's own copy of model_interface.py (or model_layers.py: `kind`), as a module of a name no other
    model shares."""
    name = f"kerasflow_{kind}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


class KerasRawInputModel(mlflow.pyfunc.PythonModel):
    """Raw input in, labelled predictions out, around one `.keras` file loaded with safe_mode."""

    def load_context(self, context: Any) -> None:
        import keras

        self.interface = load_interface(context.artifacts["model_interface"])
        if "model_layers" in context.artifacts:  # versions logged before it carry none
            # Running it registers kerasflow's own layer classes with Keras, which the `.keras` file may name.
            load_interface(context.artifacts["model_layers"], "model_layers")
        # Predicting needs no optimizer: compile=False skips restoring its state.
        self.model = keras.saving.load_model(context.artifacts["keras_model"], safe_mode=True, compile=False)
        self.config = self.interface.ModelConfig.from_dict(dict(context.model_config or {}))
        self.statistics_path = context.artifacts.get("training_statistics")

    def training_statistics(self) -> dict[str, Any] | None:
        """The training split's per-column statistics this version carries (what drift is measured against)."""
        import json

        if not self.statistics_path:
            return None
        with open(self.statistics_path) as stream:
            return json.load(stream)

    # A DataFrame hint tells MLflow to infer no schema from it: the signature logged with the model applies.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        try:
            features = self.interface.to_model_inputs(model_input, self.config.inputs)
        except self.interface.ModelInputError as error:
            # MLflow's own bad-input error: a scoring server answers 400 with this message, not 500.
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        return self.interface.prediction_frame(self.outputs(features), self.config)

    def outputs(self, features: Any) -> np.ndarray:
        """The Keras model's outputs: called eagerly on a few rows (a served request traces nothing), and
        through its compiled predict step, a chunk at a time, on many (batch scoring)."""
        rows = len(next(iter(features.values()))) if isinstance(features, dict) else len(features)
        if rows <= EAGER_ROWS:
            return np.asarray(self.model(tensors(features, 0, rows), training=False))
        return np.concatenate(
            [
                np.asarray(self.model.predict_on_batch(tensors(features, start, start + PREDICT_BATCH)))
                for start in range(0, rows, PREDICT_BATCH)
            ]
        )


def tensors(features: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of the model inputs: NumPy arrays when all are numbers, else all tensors (Keras refuses
    NumPy strings, and a mix of tensors and arrays)."""
    import tensorflow as tf

    parts = features if isinstance(features, dict) else {"": features}
    rows = {name: values[start:stop] for name, values in parts.items()}
    if any(values.dtype.kind not in "fiub" for values in rows.values()):
        rows = {name: tf.constant(values) for name, values in rows.items()}
    return rows if isinstance(features, dict) else rows[""]


mlflow.models.set_model(KerasRawInputModel())
