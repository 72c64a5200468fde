"""`kerasflow init --data PATH --target COLUMN`: a complete params.yaml for your own data, in one command.

It reads a sample of the file (or the folder of images), infers the task and what each column is,
picks a model that suits them (an MLP for columns, an embedding model for a text column, a small CNN
for images), a primary metric, a threshold a useful model must meet and a baseline, and makes it the
project's workload as `kerasflow example` does: the previous workload's schema cleared, dvc.yaml
regenerated. Every choice comes back with its reason, for the command to print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import ConfigError, Params, parse_params, with_paths_from

# Rows read to infer the columns and the task (the first ones of the file).
SAMPLE_ROWS = 50_000
# A text column: words per value, on average, from which a string column is free text and not a category.
TEXT_WORDS = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class Plan:
    """The params tree being written, and why each choice was made."""

    tree: dict[str, Any]
    reasons: list[str] = field(default_factory=list)

    def choose(self, section: str, key: str, value: Any, reason: str) -> None:
        self.tree.setdefault(section, {})[key] = value
        self.reasons.append(f"{section}.{key} = {value!r}: {reason}")


def read_sample(path: Path, target: str) -> pd.DataFrame:
    """The first SAMPLE_ROWS rows of a CSV or Parquet file; errors name the file."""
    import pyarrow as pa
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConfigError(f"{path}: file not found (--data must name a .csv or .parquet file, or a folder of images)")
    try:
        if path.suffix.lower() == ".parquet":
            batch = next(pq.ParquetFile(path).iter_batches(batch_size=SAMPLE_ROWS), None)
            frame = batch.to_pandas() if batch is not None else pq.read_schema(path).empty_table().to_pandas()
        elif path.suffix.lower() in (".csv", ".txt"):
            reader = pv.open_csv(path, convert_options=pv.ConvertOptions(strings_can_be_null=True))
            batch = reader.read_next_batch()
            frame = pa.Table.from_batches([batch]).slice(0, SAMPLE_ROWS).to_pandas()
        else:
            raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; expected .csv or .parquet")
    except (pa.ArrowException, OSError, StopIteration) as error:
        raise ConfigError(f"{path}: could not be read: {error}") from None
    if target not in frame.columns:
        from kerasflow.config import IngestParams
        from tasks.ingest import delimiter_hint

        hint = delimiter_hint(path, IngestParams(source="file", path=str(path)))
        raise ConfigError(f"{path}: no column {target!r} (--target); its columns are {list(frame.columns)[:20]}{hint}")
    if frame.empty:
        raise ConfigError(f"{path}: no rows under the header")
    return frame


def infer_task(column: pd.Series) -> tuple[str, str]:
    """classification or regression, and why."""
    values = column.dropna()
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "classification", f"the target holds labels ({values.nunique()} distinct)"
    whole = bool(len(values)) and bool(np.all(np.mod(values, 1) == 0))
    if whole and values.nunique() <= 20:
        return "classification", f"the target holds {values.nunique()} distinct whole numbers"
    return "regression", f"the target holds numbers ({values.nunique()} distinct in the first rows)"


def text_column(frame: pd.DataFrame, target: str) -> str | None:
    """The string column whose values read as free text (many words, mostly distinct), if there is one."""
    found = None
    longest = 0.0
    for name in frame.columns:
        if name == target or pd.api.types.is_numeric_dtype(frame[name]) or pd.api.types.is_bool_dtype(frame[name]):
            continue
        values = frame[name].dropna().astype(str)
        if not len(values):
            continue
        words = values.str.split().str.len().mean()
        if words >= TEXT_WORDS and values.nunique() > 0.5 * len(values) and words > longest:
            found, longest = name, words
    return found


def mlp_layers(rows: int) -> list[dict[str, Any]]:
    units = 64 if rows < 100_000 else 128
    return [
        {"type": "dense", "units": units, "activation": "relu"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": units // 2, "activation": "relu"},
    ]


def plan_table(path: Path, target: str, task: str | None, text: str | None, project_root: Path) -> Plan:
    frame = read_sample(path, target)
    relative = path.resolve().relative_to(project_root) if path.resolve().is_relative_to(project_root) else path
    plan = Plan({"seed": 42})
    plan.choose("ingest", "source", "file", f"{path.name} is a {path.suffix.lstrip('.')} file")
    plan.tree["ingest"].update(path=str(relative), target=target)
    if task is None:
        task, why = infer_task(frame[target])
    else:
        why = "given with --task"
    plan.choose("ingest", "task", task, why)
    features = [name for name in frame.columns if name != target]
    text = text or text_column(frame, target)
    if text:
        if text not in features:
            raise ConfigError(f"{path}: no column {text!r} (--text-column); its columns are {features[:20]}")
        plan.choose("ingest", "text_column", text, "its values are sentences: a TextVectorization layer reads them")
        plan.choose("ingest", "features", [text], "an embedding model reads the text alone (list more columns and "
                    "write a functional model to combine them)")  # fmt: skip
        layers = [
            {"type": "embedding", "output_dim": 64},
            {"type": "global_average_pooling1d"},
            {"type": "dense", "units": 32, "activation": "relu"},
        ]
        plan.choose("model", "layers", layers, "an embedding of the text's tokens, averaged, then a dense layer")
    else:
        kinds = {name: "numeric" if pd.api.types.is_numeric_dtype(frame[name]) else "categorical" for name in features}
        numeric = sorted(name for name, kind in kinds.items() if kind == "numeric")
        categorical = sorted(name for name, kind in kinds.items() if kind == "categorical")
        plan.reasons.append(
            f"columns: {len(numeric)} numeric (imputed and normalized in the model) {numeric[:8]}, "
            f"{len(categorical)} categorical (looked up, one-hot) {categorical[:8]}"
        )
        plan.choose("model", "layers", mlp_layers(len(frame)), "an MLP suits numeric and categorical columns")
    missing = float(frame[features].isna().mean().max()) if features else 0.0
    if missing:
        allowed = round(min(0.5, missing + 0.05), 2)
        plan.choose("validate", "max_missing_fraction", allowed, f"up to {missing:.0%} of a column is missing in "
                    "the first rows; the model imputes them")  # fmt: skip
    choose_gate(plan, task, frame[target])
    return plan


def choose_gate(plan: Plan, task: str, target: pd.Series) -> None:
    """The primary metric, the threshold a useful model meets, the baseline."""
    if task == "classification":
        majority = float(target.value_counts(normalize=True).iloc[0]) if target.notna().any() else 0.5
        bound = round(min(0.99, majority + 0.01), 3)
        plan.choose("evaluate", "primary_metric", "accuracy", "the share of right answers, for classification")
        plan.choose("register", "thresholds", {"accuracy": bound}, f"better than always answering the most frequent "
                    f"class ({majority:.1%} of the first rows)")  # fmt: skip
    else:
        plan.choose("evaluate", "primary_metric", "r2", "the share of the target's variance explained, for regression")
        plan.choose("register", "thresholds", {"r2": 0.0}, "better than predicting the mean")
    plan.choose("evaluate", "baseline", "auto", "scikit-learn's logistic regression or ridge: the model must beat it")


def plan_images(folder: Path, image_size: int | None, project_root: Path) -> Plan:
    classes = sorted(path for path in folder.iterdir() if path.is_dir())
    files = [file for kind in classes for file in sorted(kind.rglob("*")) if file.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise ConfigError(
            f"{folder}: an image folder needs one sub-folder of images per class, at least two; found "
            f"{[path.name for path in classes]} with {len(files)} image(s)"
        )
    from PIL import Image

    with Image.open(files[0]) as first:
        width, height = first.size
        channels = {"L": 1, "RGBA": 4}.get(first.mode, 3)
    if image_size is None:
        image_size = min(max(width, height), 128)
    relative = folder.resolve().relative_to(project_root) if folder.resolve().is_relative_to(project_root) else folder
    plan = Plan({"seed": 42})
    plan.choose("ingest", "source", "image_folder", f"{folder.name} holds {len(classes)} class folders of images")
    plan.tree["ingest"]["path"] = str(relative)
    why = f"the first image is {width}x{height} with {channels} channel(s); images are resized to this"
    plan.choose("ingest", "image_shape", [image_size, image_size, channels], why)
    stride = 2 if image_size > 64 else 1
    convolution = {"kernel_size": 3, "padding": "same", "activation": "relu"}
    layers = [
        {"type": "conv2d", "filters": 32, "strides": stride, **convolution},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "conv2d", "filters": 64, **convolution},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "global_average_pooling2d"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 64, "activation": "relu"},
    ]
    plan.choose("model", "layers", layers, "a small CNN, pooled to one vector per image")
    plan.choose("model", "augmentation", [{"type": "random_flip", "mode": "horizontal"}],
                "flipped copies in training make a small folder go further")  # fmt: skip
    labels = pd.Series([file.parent.name for file in files])
    choose_gate(plan, "classification", labels)
    return plan


def plan_project(
    data: Path,
    target: str | None,
    project_root: Path,
    task: str | None = None,
    text: str | None = None,
    image_size: int | None = None,
    model_name: str | None = None,
) -> tuple[Params, list[str]]:
    """The params for `data` (a file and its target column, or a folder of images), validated, and the reasons."""
    project_root = project_root.resolve()
    if data.is_dir():
        plan = plan_images(data, image_size, project_root)
        kind = "cnn"
    else:
        if not target:
            raise ConfigError(f"{data}: --target names the column to predict")
        plan = plan_table(data, target, task, text, project_root)
        kind = "text" if "text_column" in plan.tree["ingest"] else "mlp"
    name = model_name or f"kerasflow-{slug(data.stem if data.is_file() else data.name)}-{kind}"
    plan.choose("register", "model_name", name, "the registered model's name, from the data's")
    plan.tree["train"] = {"epochs": 30, "batch_size": 64 if kind != "cnn" else 32,
                          "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 5}}  # fmt: skip
    plan.reasons.append("train: up to 30 epochs, stopping 5 epochs after the validation loss last improved")
    first = next(layer for layer in plan.tree["model"]["layers"] if layer["type"] in ("dense", "conv2d"))
    index = plan.tree["model"]["layers"].index(first)
    plan.tree["tune"] = {
        "n_trials": 12,
        "space": {
            "model.optimizer.learning_rate": {"loguniform": [1.0e-4, 1.0e-2]},
            f"model.layers.{index}.{'units' if first['type'] == 'dense' else 'filters'}": {
                "int": [16, 128],
                "step": 16,
            },
        },
    }
    params = with_paths_from(parse_params(plan.tree, "kerasflow init"), project_root)
    return params, plan.reasons


def slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "data"


def init_project(data: Path, target: str | None, project_root: Path, **options: Any) -> tuple[Params, list[str]]:
    """Make the plan for `data` the project's workload: params.yaml written whole, the previous schema cleared,
    dvc.yaml regenerated."""
    from kerasflow.examples import write_workload

    params, reasons = plan_project(data, target, project_root, **options)
    header = (
        f"# Written by `kerasflow init --data {data}`"
        + (f" --target {target}" if target else "")
        + ": every key, paths from the project root. Edit it freely;\n# `kerasflow init` again starts over.\n"
    )
    write_workload(params, project_root.resolve(), header)
    return params, reasons
