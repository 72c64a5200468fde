"""Validate: infer a schema on first ingest, then check every ingest against it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import ValidateParams
from kerasflow.records import RawDatasetInfo


class DataValidationError(ValueError):
    """The raw dataset has problems; `problems` lists each one."""

    def __init__(self, problems: list[str], source: str = "raw dataset") -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} validation problem(s):\n{listing}")


def _kind(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_numeric_dtype(column):
        return "numeric"
    return "string"


def infer_schema(frame: pd.DataFrame, info: RawDatasetInfo) -> dict[str, Any]:
    """Describe columns (kind, range, nulls) and the target (task, label set)."""
    target = info.target
    columns: dict[str, Any] = {}
    for name in frame.columns:
        column = frame[name]
        entry: dict[str, Any] = {"kind": _kind(column), "nullable": bool(column.isna().any())}
        if entry["kind"] == "numeric" and column.notna().any():
            entry["min"] = float(column.min())
            entry["max"] = float(column.max())
        columns[name] = entry
    schema: dict[str, Any] = {
        "columns": columns,
        "target": target,
        "task": info.task,
        "image_shape": info.image_shape,
    }
    if info.task == "classification":
        schema["labels"] = sorted(str(label) for label in frame[target].dropna().unique())
    return schema


def _missing_problems(name: str, column: pd.Series, allowed_fraction: float) -> list[str]:
    """A column with more missing values than validate.max_missing_fraction allows (or with no values)."""
    missing = int(column.isna().sum())
    if not missing or (missing < len(column) and missing / len(column) <= allowed_fraction):
        return []
    hint = (
        f" (validate.max_missing_fraction is {allowed_fraction}; raise it to let the model impute them)"
        if missing < len(column)
        else ""
    )
    return [f"column {name!r} has {missing} missing (NaN) value(s){hint}"]


def check_dataset(frame: pd.DataFrame, info: RawDatasetInfo, params: ValidateParams) -> list[str]:
    """Problems that hold whatever the schema: emptiness, target, types, image size."""
    target, task = info.target, info.task
    if frame.empty or len(frame.columns) == 0:
        return ["the dataset is empty (no rows or no columns)"]
    if target not in frame.columns:
        return [f"target column {target!r} is missing; columns are {list(frame.columns)[:20]}"]
    problems: list[str] = []
    if len(frame) < params.min_rows:
        problems.append(f"only {len(frame)} rows; validate.min_rows requires at least {params.min_rows}")
    missing_target = int(frame[target].isna().sum())
    if missing_target:
        problems.append(f"target column {target!r} has {missing_target} missing (NaN) value(s)")
    if task == "classification":
        classes = frame[target].dropna().nunique()
        if classes < 2:
            problems.append(f"target column {target!r} has {classes} class(es); classification needs at least 2")
        elif classes > params.max_classes:
            problems.append(
                f"target column {target!r} has {classes} classes; validate.max_classes is {params.max_classes}"
            )
    elif not pd.api.types.is_numeric_dtype(frame[target]):
        problems.append(f"target column {target!r} must be numeric for regression, found {frame[target].dtype}")
    text_column = info.text_column
    image_shape = info.image_shape
    for name in info.feature_columns:
        if name not in frame.columns:
            continue
        column = frame[name]
        if name == text_column:
            if column.fillna("").astype(str).str.strip().eq("").all():
                problems.append(f"text column {name!r} is empty in every row")
            continue
        problems.extend(_missing_problems(name, column, 0.0 if image_shape else params.max_missing_fraction))
        if not pd.api.types.is_numeric_dtype(column):
            present = column.dropna()
            numbers = pd.to_numeric(present, errors="coerce")
            # Mostly numbers with a few strings is a broken numeric column, not a categorical one
            # (text that is all number-like, such as zip codes kept as strings, is a category).
            parsed = numbers.notna().mean() if len(present) else 0.0
            if image_shape or 0.9 <= parsed < 1.0:
                sample = present[numbers.isna()].head(3).tolist()
                problems.append(f"column {name!r} must be numeric, found {column.dtype} (e.g. {sample})")
            continue
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        if np.isinf(values).any():
            problems.append(f"column {name!r} has {int(np.isinf(values).sum())} infinite value(s)")
    if image_shape and text_column is None:
        expected = int(np.prod(image_shape))
        if len(info.feature_columns) != expected:
            problems.append(
                f"image_shape {image_shape} needs {expected} pixel columns, found {len(info.feature_columns)}"
            )
    return problems


def compare_to_schema(frame: pd.DataFrame, schema: dict[str, Any], params: ValidateParams) -> list[str]:
    """Problems where this ingest drifted from the recorded schema."""
    problems: list[str] = []
    expected = schema["columns"]
    missing = [name for name in expected if name not in frame.columns]
    extra = [name for name in frame.columns if name not in expected]
    if missing:
        problems.append(f"column(s) missing compared with the recorded schema: {missing[:10]}")
    if extra:
        problems.append(f"column(s) not in the recorded schema: {extra[:10]}")
    for name, entry in expected.items():
        if name not in frame.columns:
            continue
        column = frame[name]
        kind = _kind(column)
        if kind != entry["kind"]:
            problems.append(f"column {name!r} is {kind}, the recorded schema says {entry['kind']}")
            continue
        if kind == "numeric" and "min" in entry and column.notna().any():
            slack = params.range_tolerance * max(entry["max"] - entry["min"], 1e-12)
            low, high = float(column.min()), float(column.max())
            if low < entry["min"] - slack or high > entry["max"] + slack:
                problems.append(
                    f"column {name!r} ranges over [{low:g}, {high:g}], outside the recorded "
                    f"[{entry['min']:g}, {entry['max']:g}] by more than validate.range_tolerance"
                )
    if "labels" in schema and schema["target"] in frame.columns:
        unseen = sorted(set(str(label) for label in frame[schema["target"]].dropna().unique()) - set(schema["labels"]))
        if unseen:
            problems.append(f"target labels not in the recorded schema: {unseen[:10]}")
    return problems


def validate_dataset(
    frame: pd.DataFrame, info: RawDatasetInfo, schema: dict[str, Any] | None, params: ValidateParams
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the dataset; return (schema to keep, report). Raise DataValidationError on problems."""
    problems = check_dataset(frame, info, params)
    if not problems and schema is not None:
        problems = compare_to_schema(frame, schema, params)
    report = {
        "ok": not problems,
        "problems": problems,
        "rows": len(frame),
        "columns": len(frame.columns),
        "schema": "recorded" if schema is not None else "inferred",
        "md5": info.md5,
    }
    if problems:
        raise DataValidationError(problems, source=info.file or "raw dataset")
    return (schema if schema is not None else infer_schema(frame, info)), report
