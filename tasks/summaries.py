"""Per-column summaries merged batch by batch: what validate checks, and what preprocess fits the input layers
and the drift statistics from, with memory bounded by the number of columns (and of distinct categories kept).

Numbers keep exact moments (count, missing, mean and the sum of squared deviations, merged with Chan's
formula), minimum, maximum and infinities; text keeps category counts (the most frequent
`CATEGORY_LIMIT` once there are more, flagged as approximate), how many values read as numbers, and how
many are blank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# Distinct categories counted exactly per column; past twice this, the rarest are dropped (the kept counts
# stay exact for the values kept since).
CATEGORY_LIMIT = 100_000


@dataclass
class NumericSummary:
    """One numeric column so far."""

    rows: int = 0
    missing: int = 0
    infinite: int = 0
    count: int = 0  # finite values
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    minimum: float = math.inf
    maximum: float = -math.inf
    peak: float = 0.0  # largest absolute value

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype="float64").reshape(-1)
        self.rows += len(values)
        nan = np.isnan(values)
        self.missing += int(nan.sum())
        finite = values[np.isfinite(values)]
        self.infinite += int(len(values) - nan.sum() - len(finite))
        if not len(finite):
            return
        count, mean = len(finite), float(finite.mean())
        m2 = float(np.square(finite - mean).sum())
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total
        self.minimum = min(self.minimum, float(finite.min()))
        self.maximum = max(self.maximum, float(finite.max()))
        self.peak = max(self.peak, float(np.abs(finite).max()))

    @property
    def std(self) -> float:
        """Of the present values (population)."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    @property
    def filled_variance(self) -> float:
        """The variance once each missing value is filled with the mean (what the model's Normalization sees)."""
        filled = self.count + self.missing
        return self.m2 / filled if filled else 0.0


@dataclass
class CategorySummary:
    """One text (or categorical) column so far."""

    rows: int = 0
    missing: int = 0
    blank: int = 0  # present, but only white space
    numeric: int = 0  # present values that read as numbers
    counts: dict[str, int] = field(default_factory=dict)
    approximate: bool = False
    count_categories: bool = True

    def add(self, values: pd.Series) -> None:
        self.rows += len(values)
        missing = values.isna()
        self.missing += int(missing.sum())
        present = values[~missing].astype("string")
        stripped = present.str.strip()
        self.blank += int((stripped == "").sum())
        self.numeric += int(pd.to_numeric(stripped.replace("", pd.NA), errors="coerce").notna().sum())
        if not self.count_categories:
            return
        for value, count in present.value_counts(sort=False).items():
            self.counts[str(value)] = self.counts.get(str(value), 0) + int(count)
        if len(self.counts) > 2 * CATEGORY_LIMIT:
            self.counts = dict(sorted(self.counts.items(), key=lambda item: -item[1])[:CATEGORY_LIMIT])
            self.approximate = True

    @property
    def present(self) -> int:
        return self.rows - self.missing

    def most_frequent(self, limit: int) -> list[str]:
        """The `limit` most frequent values, as Keras' lookup layers order a vocabulary: by count, then by the
        value itself, both descending."""
        ranked = sorted(self.counts.items(), key=lambda item: (item[1], item[0].encode()), reverse=True)
        return [value for value, _ in ranked[:limit]]


def kind_of(dtype: Any) -> str:
    """bool, numeric or string: how validate and preprocess treat a column of this (pandas) dtype."""
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    return "string"


@dataclass
class TableSummary:
    """Every column of a table so far: numeric ones (bools as 0 / 1) and text ones, by name."""

    rows: int = 0
    kinds: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, NumericSummary] = field(default_factory=dict)
    text: dict[str, CategorySummary] = field(default_factory=dict)
    # Columns whose categories are not worth counting (free text).
    uncounted: tuple[str, ...] = ()

    def add(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        for name in frame.columns:
            column = frame[name]
            kind = self.kinds.setdefault(name, kind_of(column.dtype))
            if kind != "string":
                self.numeric.setdefault(name, NumericSummary()).add(column.to_numpy(dtype="float64", na_value=np.nan))
            else:
                summary = self.text.setdefault(name, CategorySummary(count_categories=name not in self.uncounted))
                summary.add(column)

    def missing(self, name: str) -> int:
        summary = self.numeric.get(name) or self.text.get(name)
        return summary.missing if summary else 0
