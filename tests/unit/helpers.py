"""Tiny in-memory datasets and the adapted model inputs the unit tests build models from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import PreprocessParams
from kerasflow.model_interface import ModelConfig, ModelInputs
from kerasflow.records import FittedInputs, PreprocessState, RawDatasetInfo
from tasks.features import adapt_inputs, describe_inputs, feature_matrix

GOOD_WORDS = ["great", "superb", "lovely", "solid"]
BAD_WORDS = ["awful", "broken", "dull", "cheap"]


@dataclass(frozen=True)
class Prepared:
    """Raw features, labels, the described inputs, the constants adapted on the training rows, and the
    preprocessing state the model is built from."""

    x: Any
    y: np.ndarray
    inputs: ModelInputs
    fitted: FittedInputs
    data: PreprocessState


def model_state(
    inputs: ModelInputs, task: str, n_classes: int = 0, fitted: FittedInputs | None = None
) -> PreprocessState:
    """The preprocessing state a model is built from, for data the test made in memory (no split files)."""
    classes = list(range(n_classes)) if n_classes else None
    return PreprocessState(
        task, inputs, "y", inputs.column_names, {}, 0, "", classes=classes, fitted=fitted or FittedInputs()
    )


def prepare(
    frame: pd.DataFrame,
    target: str,
    task: str,
    params: PreprocessParams | None = None,
    text_column: str | None = None,
    train_rows: int | None = None,
) -> Prepared:
    """Describe the columns of `frame`, adapt the input layers on its first `train_rows` rows."""
    params = params or PreprocessParams()
    features = [column for column in frame.columns if column != target]
    info = RawDatasetInfo(target=target, task=task, feature_columns=features, text_column=text_column)
    inputs = describe_inputs(frame, info, params)
    x = feature_matrix(frame, info, inputs)
    fitted = adapt_inputs(inputs, x.iloc[:train_rows] if train_rows else x, params)
    if task == "classification":
        y = frame[target].to_numpy(dtype="int64")
        n_classes = int(y.max()) + 1
    else:
        y = frame[target].to_numpy(dtype="float32")
        n_classes = 0
    return Prepared(x, y, inputs, fitted, model_state(inputs, task, n_classes, fitted))


def prepare_images(x: np.ndarray, y: np.ndarray, params: PreprocessParams | None = None) -> Prepared:
    inputs = ModelInputs.images(x.shape[1:])
    fitted = adapt_inputs(inputs, x, params or PreprocessParams())
    return Prepared(x, y, inputs, fitted, model_state(inputs, "classification", int(y.max()) + 1, fitted))


FILLER = ["the", "item", "thing", "it", "was", "quite", "really", "this"]


def _notes(rng: np.random.Generator, good: np.ndarray) -> list[str]:
    """Short notes of filler words with two words of their sentiment."""
    notes = []
    for positive in good:
        words = [*rng.choice(FILLER, int(rng.integers(2, 6))), *rng.choice(GOOD_WORDS if positive else BAD_WORDS, 2)]
        rng.shuffle(words)
        notes.append(" ".join(str(word) for word in words).capitalize() + ".")
    return notes


def review_frame(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Free text whose words tell the label (1 positive, 0 negative), balanced."""
    rng = np.random.default_rng(seed)
    good = np.arange(rows) % 2 == 1
    return pd.DataFrame({"review": _notes(rng, good), "sentiment": good.astype("int64")})


def mixed_frame(rows: int = 160, seed: int = 0, missing: float = 0.1, text_signal: bool = True) -> pd.DataFrame:
    """A numeric, a categorical and a free-text column (with missing values) behind a binary label.

    Without `text_signal` the label depends on the numeric and categorical columns only.
    """
    rng = np.random.default_rng(seed)
    size = rng.normal(size=rows)
    color = rng.choice(["red", "green", "blue"], rows)
    good = rng.random(rows) < 0.5
    notes = _notes(rng, good)
    score = 1.5 * size + np.where(color == "red", 1.5, -0.5) + (np.where(good, 2.0, -2.0) if text_signal else 0.0)
    frame = pd.DataFrame({"size": size, "color": color, "note": notes, "label": (score > 0).astype("int64")})
    frame.loc[rng.random(rows) < missing, "size"] = np.nan
    frame.loc[rng.random(rows) < missing, "color"] = None
    return frame


def digit_images(rows: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8x8 grey images with values 0..16 (like sklearn's digits): a bright top half is class 1."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % 2
    x = rng.integers(0, 6, size=(rows, 8, 8, 1)).astype("float32")
    x[y == 1, :4] += 10
    return x, y.astype("int64")


def log_mixed_model(
    folder: Path, task: str, export: bool = False, statistics: bool = False, layers: list[dict] | None = None
) -> tuple[str, Any, Prepared, pd.DataFrame]:
    """A small model (a dense layer of 4 units, or `layers`) on a numeric and a categorical column, saved in
    `folder` as .keras and logged to the active MLflow run as the raw-input pyfunc (with its training statistics,
    if asked); returns (model URI, Keras model, its data, the input example)."""
    import keras

    from kerasflow import tracking
    from kerasflow.config import ModelParams
    from tasks.features import raw_example
    from tasks.model import build_model, export_for_serving

    frame = mixed_frame(rows=60).drop(columns="note")
    if task == "regression":
        frame["label"] = frame["label"] * 2.5
    prepared = prepare(frame, "label", task)
    keras.utils.set_random_seed(0)
    layers = layers or [{"type": "dense", "units": 4}]
    model = build_model(ModelParams.model_validate({"layers": layers}), prepared.data)
    model.save(folder / "model.keras")
    saved_model = None
    if export:
        saved_model = folder / "saved_model"
        export_for_serving(model, saved_model, prepared.inputs)
    classes = [0, 1] if task == "classification" else None
    config = ModelConfig(task, prepared.inputs, classes, 0.5)
    example = raw_example(prepared.x, prepared.inputs)
    kept = None
    if statistics:
        import json

        from tasks.drift import training_statistics

        kept = folder / "statistics.json"
        kept.write_text(json.dumps(training_statistics(prepared.x, prepared.inputs).to_dict()))
    uri = tracking.log_model(
        folder / "model.keras", config, example, saved_model=saved_model, statistics=kept
    ).model_uri
    return uri, model, prepared, example
