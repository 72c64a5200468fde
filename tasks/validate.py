"""Validate: infer a schema on first ingest, then check every ingest against it, a batch of rows at a time.

The raw dataset is summarized batch by batch (`tasks.summaries`: counts, missing values, ranges,
moments, category counts); every check reads the merged summary, so memory follows the batch and
the number of columns, never the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import ValidateParams
from kerasflow.errors import ExpectedError
from kerasflow.records import ColumnSchema, DatasetSchema, RawDatasetInfo, ValidationReport
from tasks.summaries import TableSummary

# Categories listed per column in the validation report.
REPORTED_CATEGORIES = 20


class DataValidationError(ExpectedError, ValueError):
    """The raw dataset has problems; `problems` lists each one."""

    def __init__(self, problems: list[str], source: str = "raw dataset", hint: str = "") -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} validation problem(s):\n{listing}" + (f"\n{hint}" if hint else ""))


# Examples of values that are not numbers kept per column, for the message.
EXAMPLES = 3


@dataclass
class DatasetSummary(TableSummary):
    """The table's summary, with what validate adds: the column order and dtypes, the target's distinct values,
    and a few values of each text column that are not numbers."""

    target: str = ""
    columns: list[str] = field(default_factory=list)
    dtypes: dict[str, Any] = field(default_factory=dict)
    target_values: set[str] = field(default_factory=set)
    not_numbers: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, frame: pd.DataFrame) -> None:
        if not self.columns:
            self.columns = list(frame.columns)
            self.dtypes = {name: frame[name].dtype for name in frame.columns}
        super().add(frame)
        if (
            self.target in frame.columns
            and self.kinds.get(self.target) != "string"
            and len(self.target_values) <= 10_000
        ):
            self.target_values.update(str(value) for value in frame[self.target].dropna().unique())
        for name in self.text:
            kept = self.not_numbers.setdefault(name, [])
            if len(kept) < EXAMPLES and name in frame.columns:
                present = frame[name].dropna()
                kept.extend(present[pd.to_numeric(present, errors="coerce").isna()].head(EXAMPLES - len(kept)).tolist())


def summarize(batches: pd.DataFrame | Iterable[pd.DataFrame], info: RawDatasetInfo) -> DatasetSummary:
    """Every column of the raw dataset, merged over its batches (a DataFrame is one batch)."""
    uncounted = tuple(name for name in (info.text_column, "path" if info.image_root else None) if name)
    summary = DatasetSummary(uncounted=uncounted, target=info.target)
    for frame in [batches] if isinstance(batches, pd.DataFrame) else batches:
        summary.add(frame)
    return summary


def target_labels(summary: DatasetSummary, target: str) -> list[str]:
    """The target's distinct values, as text."""
    if target in summary.text:
        return sorted(summary.text[target].counts)
    return sorted(summary.target_values)


def infer_schema(summary: DatasetSummary, info: RawDatasetInfo) -> DatasetSchema:
    """Describe columns (kind, range, nulls) and the target (task, label set)."""
    columns: dict[str, ColumnSchema] = {}
    for name in summary.columns:
        kind, numbers = summary.kinds[name], summary.numeric.get(name)
        measured = kind == "numeric" and numbers is not None and numbers.count
        columns[name] = ColumnSchema(
            kind,
            bool(summary.missing(name)),
            numbers.minimum if measured else None,  # type: ignore[union-attr]
            numbers.maximum if measured else None,  # type: ignore[union-attr]
        )
    labels = target_labels(summary, info.target) if info.task == "classification" else None
    return DatasetSchema(columns, info.target, info.task, info.image_shape, labels)


def _missing_problems(name: str, missing: int, rows: int, allowed_fraction: float) -> list[str]:
    """A column with more missing values than validate.max_missing_fraction allows (or with no values)."""
    if not missing or (missing < rows and missing / rows <= allowed_fraction):
        return []
    hint = (
        f" (validate.max_missing_fraction is {allowed_fraction}; raise it to let the model impute them)"
        if missing < rows
        else ""
    )
    return [f"column {name!r} has {missing} missing (NaN) value(s){hint}"]


def check_summary(summary: DatasetSummary, info: RawDatasetInfo, params: ValidateParams) -> list[str]:
    """Problems that hold whatever the schema: emptiness, target, types, image size."""
    target, task = info.target, info.task
    columns = summary.columns
    if not summary.rows or not columns:
        return ["the dataset is empty (no rows or no columns)"]
    if target not in columns:
        return [f"target column {target!r} is missing; columns are {list(columns)[:20]}"]
    problems: list[str] = []
    if summary.rows < params.min_rows:
        problems.append(f"only {summary.rows} rows; validate.min_rows requires at least {params.min_rows}")
    missing_target = summary.missing(target)
    if missing_target:
        problems.append(
            f"target column {target!r} has {missing_target} missing (NaN) value(s); set ingest.drop_missing_target: "
            "true to train on the rows that have one"
        )
    if task == "classification":
        classes = len(target_labels(summary, target))
        if classes < 2:
            named = "the folder has" if info.image_root else f"target column {target!r} has"
            unit = "class sub-folder(s) with images" if info.image_root else "class(es)"
            problems.append(f"{named} {classes} {unit}; classification needs at least 2")
        elif classes > params.max_classes:
            problems.append(
                f"target column {target!r} has {classes} classes; validate.max_classes is {params.max_classes}"
            )
    elif summary.kinds[target] != "numeric":
        problems.append(f"target column {target!r} must be numeric for regression, found {summary.dtypes[target]}")
    pixels = bool(info.image_shape) and not info.image_root and info.text_column is None
    for name in info.feature_columns:
        if name not in summary.kinds:
            continue
        if name in summary.text:
            text = summary.text[name]
            if name == info.text_column:
                if text.present == text.blank:
                    problems.append(f"text column {name!r} is empty in every row")
                continue
            if name == "path" and info.image_root:
                continue
            problems.extend(
                _missing_problems(name, text.missing, summary.rows, 0.0 if pixels else params.max_missing_fraction)
            )
            # Mostly numbers with a few strings is a broken numeric column, not a categorical one (text that is all
            # number-like, such as zip codes kept as strings, is a category).
            parsed = text.numeric / text.present if text.present else 0.0
            if pixels or 0.9 <= parsed < 1.0:
                sample = summary.not_numbers.get(name, [])
                problems.append(f"column {name!r} must be numeric, found {summary.dtypes[name]} (e.g. {sample})")
            continue
        numbers = summary.numeric[name]
        problems.extend(
            _missing_problems(name, numbers.missing, summary.rows, 0.0 if pixels else params.max_missing_fraction)
        )
        if numbers.infinite:
            problems.append(f"column {name!r} has {numbers.infinite} infinite value(s)")
    if pixels:
        expected = int(np.prod(info.image_shape))
        if len(info.feature_columns) != expected:
            problems.append(
                f"image_shape {info.image_shape} needs {expected} pixel columns, found {len(info.feature_columns)}"
            )
    return problems


def compare_to_schema(summary: DatasetSummary, schema: DatasetSchema, params: ValidateParams) -> list[str]:
    """Problems where this ingest drifted from the recorded schema."""
    problems: list[str] = []
    expected = schema.columns
    columns = summary.columns
    missing = [name for name in expected if name not in columns]
    extra = [name for name in columns if name not in expected]
    if missing:
        problems.append(f"column(s) missing compared with the recorded schema: {missing[:10]}")
    if extra:
        problems.append(f"column(s) not in the recorded schema: {extra[:10]}")
    for name, entry in expected.items():
        if name not in columns:
            continue
        kind = summary.kinds[name]
        if kind != entry.kind:
            problems.append(f"column {name!r} is {kind}, the recorded schema says {entry.kind}")
            continue
        numbers = summary.numeric.get(name)
        if kind == "numeric" and entry.min is not None and entry.max is not None and numbers and numbers.count:
            slack = params.range_tolerance * max(entry.max - entry.min, 1e-12)
            low, high = numbers.minimum, numbers.maximum
            if low < entry.min - slack or high > entry.max + slack:
                problems.append(
                    f"column {name!r} ranges over [{low:g}, {high:g}], outside the recorded "
                    f"[{entry.min:g}, {entry.max:g}] by more than validate.range_tolerance"
                )
    if schema.labels is not None and schema.target in columns:
        unseen = sorted(set(target_labels(summary, schema.target)) - set(schema.labels))
        if unseen:
            problems.append(f"target labels not in the recorded schema: {unseen[:10]}")
    return problems


def statistics_report(summary: DatasetSummary) -> dict[str, Any]:
    """Each column's count, missing values, range, mean and standard deviation, or its most frequent values."""
    report: dict[str, Any] = {}
    for name in summary.columns:
        if name in summary.numeric:
            numbers = summary.numeric[name]
            report[name] = {"count": numbers.count, "missing": numbers.missing}
            if numbers.count:
                report[name].update(min=numbers.minimum, max=numbers.maximum, mean=numbers.mean, std=numbers.std)
        elif name in summary.text:
            text = summary.text[name]
            report[name] = {"count": text.present, "missing": text.missing}
            if text.count_categories:
                report[name]["distinct"] = len(text.counts) if not text.approximate else f">{len(text.counts)}"
                report[name]["top"] = {value: text.counts[value] for value in text.most_frequent(REPORTED_CATEGORIES)}
    return report


def validate_dataset(
    batches: pd.DataFrame | Iterable[pd.DataFrame],
    info: RawDatasetInfo,
    schema: DatasetSchema | None,
    params: ValidateParams,
) -> tuple[DatasetSchema, ValidationReport]:
    """Check the dataset (a DataFrame, or its batches); return (schema to keep, report). Raise
    DataValidationError on problems."""
    summary = summarize(batches, info)
    problems = check_summary(summary, info, params)
    if not problems and schema is not None:
        problems = compare_to_schema(summary, schema, params)
    report = ValidationReport(
        ok=not problems,
        md5=info.md5,
        problems=problems,
        rows=summary.rows,
        columns=len(summary.columns),
        schema="recorded" if schema is not None else "inferred",
        statistics=statistics_report(summary),
    )
    if problems:
        raise DataValidationError(problems, source=info.file or "raw dataset")
    return (schema if schema is not None else infer_schema(summary, info)), report


def check_dataset(frame: pd.DataFrame, info: RawDatasetInfo, params: ValidateParams) -> list[str]:
    """The schema-free problems of one in-memory frame."""
    return check_summary(summarize(frame, info), info, params)
