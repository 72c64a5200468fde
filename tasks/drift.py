"""Drift: the training split's statistics, kept inside every logged model, and how far new data strays.

At preprocess, in the pass that writes the splits, each numeric column of the training rows gets
quantile bins (deciles of a seeded sample of the training values, `preprocess.sample_rows`) with the
share of the sample in each, and its mean, spread and share of missing values over every row; each
categorical column the share of each category. Image models get one derived column, each image's mean pixel value.
At prediction, new rows are counted into the same bins batch by batch (memory stays flat), and
each column gets the population stability index (PSI), the share of categories training never
saw, and the change in its share of missing values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.model_interface import CATEGORICAL, MISSING, NUMERIC, ModelInputs, numbers, strings
from kerasflow.records import ColumnDrift, DriftReport
from tasks.summaries import CategorySummary, NumericSummary, TableSummary

BINS = 10
# Categories whose share is kept per column (preprocess.max_categories' default, the model's vocabulary);
# any rarer ones of training's are "other", never "unseen".
MAX_CATEGORIES = 1000
# Shares are floored at this before the PSI's logarithm, so an empty bin is a large term, not an infinite one.
PSI_FLOOR = 1e-4
IMAGE_COLUMN = "pixel_mean"
# Rows of each batch of new data whose values are counted into the bins: a sample of a large file keeps the
# PSI's precision at a fraction of the cost; missing values and unseen categories are counted on every row.
BIN_SAMPLE_ROWS = 4096


@dataclass(frozen=True)
class NumericStatistics:
    edges: list[float]  # inner bin edges: len(shares) - 1 of them
    shares: list[float]
    mean: float
    std: float
    missing_share: float


@dataclass(frozen=True)
class CategoryStatistics:
    shares: dict[str, float]
    other_share: float  # training categories beyond the MAX_CATEGORIES most frequent
    missing_share: float


@dataclass(frozen=True)
class TrainingStatistics:
    """Per-column statistics of the training split: what new data is compared with."""

    rows: int
    numeric: dict[str, NumericStatistics] = field(default_factory=dict)
    categorical: dict[str, CategoryStatistics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingStatistics:
        return cls(
            rows=int(data["rows"]),
            numeric={name: NumericStatistics(**value) for name, value in data.get("numeric", {}).items()},
            categorical={name: CategoryStatistics(**value) for name, value in data.get("categorical", {}).items()},
        )


def image_means(images: np.ndarray) -> pd.DataFrame:
    """An image model's one drift column: each image's mean pixel value."""
    array = np.asarray(images, dtype="float32")
    return pd.DataFrame({IMAGE_COLUMN: array.reshape(len(array), -1).mean(axis=1)})


def training_statistics(x_train: np.ndarray | pd.DataFrame, inputs: ModelInputs) -> TrainingStatistics:
    """Statistics of training rows held in memory (text columns are left out): every row is the sample."""
    frame = image_means(x_train) if inputs.kind == "image" else x_train
    summary = TableSummary()
    summary.add(drift_columns(frame, inputs))
    return statistics_from(summary, drift_columns(frame, inputs), inputs)


def drift_columns(frame: pd.DataFrame, inputs: ModelInputs) -> pd.DataFrame:
    """The columns drift is measured on, as numbers (float64, NaN where missing) or as text (MISSING where
    missing): each numeric and categorical input column, or an image model's `pixel_mean`."""
    if inputs.kind == "image":
        return pd.DataFrame({IMAGE_COLUMN: frame[IMAGE_COLUMN].to_numpy(dtype="float64")}, index=frame.index)
    columns = {}
    for entry in inputs.columns:
        if entry.kind == NUMERIC:
            columns[entry.column] = numbers(frame[entry.column])
        elif entry.kind == CATEGORICAL:
            columns[entry.column] = pd.array(strings(frame[entry.column]), dtype="string")
    return pd.DataFrame(columns, index=frame.index)


def statistics_from(summary: TableSummary, sample: pd.DataFrame | None, inputs: ModelInputs) -> TrainingStatistics:
    """The drift statistics from a summary of every training row (`drift_columns`, batch by batch): mean, spread
    and missing share of numbers and the share of each category exactly; the numbers' decile bins from
    `sample`, a seeded sample of the rows (all of them when they are few)."""
    kinds = {IMAGE_COLUMN: NUMERIC} if inputs.kind == "image" else {e.column: e.kind for e in inputs.columns}
    numeric, categorical = {}, {}
    for column, kind in kinds.items():
        if kind == NUMERIC:
            values = sample[column].to_numpy(dtype="float64") if sample is not None else np.empty(0)
            numeric[column] = numeric_statistics(summary.numeric.get(column), values)
        elif kind == CATEGORICAL:
            categorical[column] = category_statistics(summary.text[column])
    return TrainingStatistics(rows=summary.rows, numeric=numeric, categorical=categorical)


def numeric_statistics(summary: NumericSummary | None, sample: np.ndarray) -> NumericStatistics:
    present = sample[~np.isnan(sample)]
    if summary is None or not summary.count or not len(present):
        return NumericStatistics([], [1.0], 0.0, 0.0, 1.0)
    edges = np.unique(np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return NumericStatistics(
        edges=edges.tolist(),
        shares=(counts / len(present)).tolist(),
        mean=summary.mean,
        std=summary.std,
        missing_share=float(summary.missing / summary.rows),
    )


def category_statistics(summary: CategorySummary) -> CategoryStatistics:
    """Shares of the most frequent categories among present values (MISSING, an empty value, is missing)."""
    counts = {value: count for value, count in summary.counts.items() if value != MISSING}
    present = summary.rows - summary.missing - summary.counts.get(MISSING, 0)
    kept = sorted(counts.items(), key=lambda item: -item[1])[:MAX_CATEGORIES]
    total = max(present, 1)
    return CategoryStatistics(
        shares={str(name): float(count / total) for name, count in kept},
        other_share=float((present - sum(count for _, count in kept)) / total),
        missing_share=float(1 - present / max(summary.rows, 1)),
    )


def numeric_matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The named columns side by side as float64, NaN where a value is missing."""
    table = frame[names]
    if all(pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) for dtype in table.dtypes):
        return table.to_numpy(dtype="float64", na_value=np.nan)
    return np.column_stack([numbers(table[name]) for name in names])


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins: sum((a - e) * ln(a / e))."""
    expected = np.maximum(np.asarray(expected, dtype="float64"), PSI_FLOOR)
    actual = np.maximum(np.asarray(actual, dtype="float64"), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# The chance that sampling alone puts a column of unchanged data past its PSI bound (before the correction for
# the number of columns tested).
PSI_FALSE_ALARM = 0.05


def beyond_noise(shares: Any, counts: Any, columns: int = 1) -> bool:
    """Whether new rows' `counts` over the training bins differ from the training `shares` by more than sampling
    alone would, but for a PSI_FALSE_ALARM chance shared among the `columns` tested (Pearson's chi-squared test,
    Bonferroni's correction). 50 rows drawn like the training split pass it 95 times in 100; they can still
    show a PSI of 0.2 by chance (about (bins - 1) / rows)."""
    from scipy.stats import chi2

    counts = np.asarray(counts, dtype="float64")
    expected = np.asarray(shares, dtype="float64") * counts.sum()
    present = expected > 0
    if counts.sum() <= 0 or present.sum() < 2:
        return False
    statistic = float(np.sum((counts[present] - expected[present]) ** 2 / expected[present]))
    statistic += float(counts[~present].sum())  # rows in bins training never filled: far from expected
    return float(chi2.sf(statistic, int(present.sum()) - 1)) < PSI_FALSE_ALARM / max(columns, 1)


@dataclass
class ColumnCounts:
    """New rows of one column, counted into the training bins (or categories) so far."""

    bins: np.ndarray
    rows: int = 0
    binned: int = 0  # present values counted into the bins (a sample of each batch)
    missing: int = 0
    unseen: int = 0
    unseen_values: dict[str, int] = field(default_factory=dict)


class DriftCounter:
    """New data counted batch by batch against the training statistics; `report` compares the two."""

    def __init__(self, statistics: TrainingStatistics, inputs: ModelInputs) -> None:
        self.statistics = statistics
        self.image = inputs.kind == "image"
        self.counts = {
            name: ColumnCounts(np.zeros(len(s.shares), dtype="int64")) for name, s in statistics.numeric.items()
        }
        self.counts.update(
            {name: ColumnCounts(np.zeros(len(s.shares), dtype="int64")) for name, s in statistics.categorical.items()}
        )
        self.rows = 0

    def add(self, batch: Any) -> None:
        frame = image_means(batch) if self.image else batch
        if not len(frame):
            return
        self.rows += len(frame)
        names = list(self.statistics.numeric)
        # Every numeric column at once: one float64 matrix (NaN where missing, a blank text cell included).
        matrix = numeric_matrix(frame, names) if names else np.empty((len(frame), 0))
        missing = np.isnan(matrix).sum(axis=0)
        sample = matrix[:BIN_SAMPLE_ROWS]
        for position, (name, stats) in enumerate(self.statistics.numeric.items()):
            counts = self.counts[name]
            counts.rows += len(frame)
            counts.missing += int(missing[position])
            values = sample[:, position]
            values = values[~np.isnan(values)]
            counts.binned += len(values)
            counts.bins += np.bincount(
                np.searchsorted(np.asarray(stats.edges), values, side="right"), minlength=len(stats.shares)
            )
        for name, stats in self.statistics.categorical.items():
            values = pd.Series(strings(frame[name]))
            counts = self.counts[name]
            counts.rows += len(values)
            counts.missing += int((values == MISSING).sum())
            present = values[values != MISSING]
            known = present.isin(list(stats.shares))
            position = {category: index for index, category in enumerate(stats.shares)}
            counts.bins += np.bincount(
                present[known].map(position).to_numpy(dtype="int64"), minlength=len(stats.shares)
            )
            # Only categories training never had are unseen; training's rarer ones ("other") are not.
            unseen = present[~known]
            if stats.other_share == 0 and len(unseen):
                counts.unseen += len(unseen)
                for value, count in unseen.value_counts().head(5).items():
                    counts.unseen_values[str(value)] = counts.unseen_values.get(str(value), 0) + int(count)

    def report(self, psi_threshold: float, unseen_threshold: float, missing_threshold: float) -> DriftReport:
        """Per column: PSI (numeric), unseen share (categorical), missing share then and now; and which drifted.
        A numeric column drifts when its PSI is past the threshold and its bins' counts differ from the training
        shares by more than sampling alone explains (`beyond_noise`): a small batch cannot raise drift by chance."""
        columns: dict[str, ColumnDrift] = {}
        tested = len(self.statistics.numeric)
        for name, stats in {**self.statistics.numeric, **self.statistics.categorical}.items():
            counts = self.counts[name]
            present = max(counts.rows - counts.missing, 1)
            missing_now = counts.missing / max(counts.rows, 1)
            reasons, psi_value, unseen_share = [], None, None
            if name in self.statistics.numeric:
                psi_value = psi(stats.shares, counts.bins / counts.binned) if counts.binned else 0.0
                if psi_value > psi_threshold and beyond_noise(stats.shares, counts.bins, tested):
                    reasons.append(f"PSI {psi_value:.2f}")
            else:
                unseen_share = counts.unseen / present
                if unseen_share > unseen_threshold:
                    reasons.append(f"unseen categories {unseen_share:.1%}")
            if abs(missing_now - stats.missing_share) > missing_threshold:
                reasons.append(f"missing {stats.missing_share:.1%} -> {missing_now:.1%}")
            columns[name] = ColumnDrift(
                kind="numeric" if psi_value is not None else "categorical",
                missing_share_training=stats.missing_share,
                missing_share_new=missing_now,
                psi=psi_value,
                unseen_share=unseen_share,
                unseen_examples=None if unseen_share is None else counts.unseen_values,
                drifted=bool(reasons),
                reasons=reasons,
            )
        thresholds = {"psi": psi_threshold, "unseen_share": unseen_threshold, "missing_change": missing_threshold}
        return DriftReport(self.rows, self.statistics.rows, thresholds, columns)


def plot_drift(report: DriftReport, path: Any, title: str = "") -> None:
    """One bar per column (PSI for numbers, unseen share for categories), the thresholds drawn, drifted ones red."""
    from kerasflow.plotting import pyplot, save_figure

    plt = pyplot()
    names = list(report.columns)
    values = [report.columns[name].value for name in names]
    colors = ["tab:red" if report.columns[name].drifted else "tab:blue" for name in names]
    figure, axis = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 3.8))
    axis.bar(range(len(names)), values, color=colors)
    axis.axhline(report.thresholds["psi"], color="grey", linestyle="--", linewidth=1, label="PSI threshold")
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("PSI (numbers) / unseen share (categories)")
    axis.set_title(title or f"Drift of {report.rows:,} new rows against the training split")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)
