"""How sure the gate can be: a paired bootstrap over the test rows, and the test rows cut into slices.

The test rows are resampled with replacement, `RESAMPLES` times, once per run (`Bootstrap`). Every model
(the candidate, the baseline, the reference, the re-scored champion) and every slice is scored on those same
resamples, so a comparison is paired: the spread of the difference between two models over the resamples is
its interval, and the share of resamples in which the candidate is better is its probability of being better.

Each resample is a row of counts (how often each test row was drawn); every metric is computed from
weighted sums over those counts, many resamples at a time (`weighted_scores`), never by calling scikit-learn
a thousand times. It stays bounded on large splits: the resamples are drawn over a seeded sample of at most
`BOOTSTRAP_ROWS` test rows, and their spread around that sample's value is narrowed by sqrt(sample / rows),
the m-out-of-n bootstrap's rescaling (for these smooth metrics the spread shrinks as one over the square root
of the rows). The point values stay those of every test row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from kerasflow.metrics import lower_is_better
from kerasflow.model_interface import MISSING, positive_share, predicted_classes

# Resamples of the test rows (the interval's ends are their 2.5th and 97.5th percentiles).
RESAMPLES = 1000
# Test rows the resamples are drawn over at most (a seeded sample past it).
BOOTSTRAP_ROWS = 20_000
# Resamples scored at a time: the count matrix in memory is CHUNK x rows.
CHUNK = 100
# The confidence of the intervals reported.
LEVEL = 0.95


@dataclass(frozen=True)
class Bootstrap:
    """The resamples of one test split: `counts[b, i]` is how often sample row `positions[i]` was drawn in
    resample b. Every model and slice of the run is scored on these same counts."""

    rows: int
    positions: np.ndarray
    counts: np.ndarray

    @classmethod
    def draw(cls, rows: int, seed: int, resamples: int = RESAMPLES, max_rows: int = BOOTSTRAP_ROWS) -> Bootstrap:
        rng = np.random.default_rng([seed, 31])
        positions = np.arange(rows) if rows <= max_rows else np.sort(rng.choice(rows, max_rows, replace=False))
        m = len(positions)
        counts = np.zeros((resamples, m), dtype="uint8")
        for start in range(0, resamples, CHUNK):
            b = min(CHUNK, resamples - start)
            drawn = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
            found = np.bincount(drawn.ravel(), minlength=b * m).reshape(b, m)
            counts[start : start + b] = np.minimum(found, 255)
        return cls(rows, positions, counts)

    @property
    def scale(self) -> float:
        """How much narrower the spread over every row is than over the sample: sqrt(sample / rows)."""
        return float(np.sqrt(len(self.positions) / self.rows)) if self.rows else 1.0

    def distribution(
        self, score: Any, y: np.ndarray, outputs: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """`score(y, outputs, weights)` (`weighted_scores` with the task bound) on every row (or the rows of
        `mask`) and on each resample, the resamples' values moved to spread around the value on every row."""
        mask = np.ones(self.rows, dtype=bool) if mask is None else mask
        full = float(score(y[mask], outputs[mask], np.ones((1, int(mask.sum())), dtype="float32"))[0])
        inside = mask[self.positions]
        sample_y, sample_outputs = y[self.positions][inside], outputs[self.positions][inside]
        base = float(score(sample_y, sample_outputs, np.ones((1, int(inside.sum())), dtype="float32"))[0])
        values = np.concatenate(
            [
                score(sample_y, sample_outputs, self.counts[start : start + CHUNK, inside].astype("float32"))
                for start in range(0, len(self.counts), CHUNK)
            ]
        )
        return full, full + self.scale * (values - base)


def interval(values: np.ndarray) -> tuple[float | None, float | None]:
    """The central LEVEL interval of the resampled values (None when no resample could be scored)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def better_share(metric: str, differences: np.ndarray) -> float | None:
    """The share of resamples in which the candidate is strictly better (a tie is not better)."""
    differences = differences[np.isfinite(differences)]
    if not len(differences):
        return None
    better = differences < 0 if lower_is_better(metric) else differences > 0
    return float(np.mean(better))


def metric_scorer(metric: str, task: str, n_classes: int, threshold: float) -> Any:
    """`weighted_scores` for one metric and model, as `score(y, outputs, weights)`."""

    def score(y: np.ndarray, outputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_scores(metric, task, y, outputs, n_classes, threshold, weights)

    return score


def weighted_scores(
    metric: str,
    task: str,
    y: np.ndarray,
    outputs: np.ndarray,
    n_classes: int,
    threshold: float,
    weights: np.ndarray,
) -> np.ndarray:
    """`metric` of the model's `outputs` against `y` under each row of `weights` (resamples x rows: how often
    each row counts), as `tasks.evaluate.score_predictions` computes it with all weights one. NaN where a
    resample leaves the metric undefined (ROC AUC without both classes, R² of a constant target)."""
    weights = np.asarray(weights, dtype="float64")
    totals = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if task != "classification":
            y = np.asarray(y, dtype="float64")
            errors = y - np.asarray(outputs, dtype="float64").reshape(-1)
            if metric == "mae":
                return weights @ np.abs(errors) / totals
            squared = weights @ errors**2
            if metric == "rmse":
                return np.sqrt(squared / totals)
            mean = weights @ y / totals
            spread = weights @ y**2 - totals * mean**2
            return np.where(spread > 1e-12 * np.maximum(totals, 1), 1 - squared / spread, np.nan)
        y = np.asarray(y, dtype="int64")
        if metric == "roc_auc":
            return weighted_roc_auc(y, outputs, n_classes, weights)
        predicted = predicted_classes(outputs, threshold)
        if metric == "accuracy":
            return weights @ (predicted == y) / totals
        labels = np.union1d(np.unique(y), np.unique(predicted))
        true_positive = weighted_sums(weights, one_hot(np.where(predicted == y, y, -1), labels))
        called = weighted_sums(weights, one_hot(predicted, labels))
        actual = weighted_sums(weights, one_hot(y, labels))
        precision = np.where(called > 0, true_positive / called, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        if metric == "precision":
            return precision.mean(axis=1)
        if metric == "recall":
            return recall.mean(axis=1)
        both = called + actual
        return np.where(both > 0, 2 * true_positive / both, 0.0).mean(axis=1)


def weighted_sums(weights: np.ndarray, columns: sparse.csr_array) -> np.ndarray:
    """weights (resamples x rows) times a sparse rows x columns matrix, as a dense resamples x columns array."""
    return np.asarray((columns.T @ weights.T).T)


def one_hot(values: np.ndarray, labels: np.ndarray) -> sparse.csr_array:
    """rows x labels, 1 where the row's value is that label (values outside `labels` leave the row empty)."""
    column = np.searchsorted(labels, values)
    column = np.clip(column, 0, len(labels) - 1)
    hit = labels[column] == values
    rows = np.flatnonzero(hit)
    return sparse.csr_array((np.ones(len(rows)), (rows, column[hit])), shape=(len(values), len(labels)))


def weighted_roc_auc(y: np.ndarray, outputs: np.ndarray, n_classes: int, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of weights: of the positive share for two classes, else the mean one-vs-rest AUC
    over the classes (scikit-learn's `multi_class="ovr"`, macro). Ties count one half."""
    positive = positive_share(outputs)
    if positive is not None or n_classes <= 2:
        scores = positive if positive is not None else np.asarray(outputs).reshape(-1)
        return binary_auc(y == 1, scores, weights)
    outputs = np.asarray(outputs, dtype="float64")
    outputs = outputs / outputs.sum(axis=1, keepdims=True)
    per_class = [binary_auc(y == k, outputs[:, k], weights) for k in range(n_classes)]
    return np.mean(per_class, axis=0)


def binary_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted Mann-Whitney statistic: the chance a positive row scores above a negative one."""
    levels, group = np.unique(np.asarray(scores, dtype="float64"), return_inverse=True)
    groups = sparse.csr_array(
        (np.ones(len(group)), (np.arange(len(group)), group.reshape(-1))), shape=(len(group), len(levels))
    )
    positives = weighted_sums(weights * positive, groups)
    negatives = weighted_sums(weights * ~positive, groups)
    below = np.cumsum(negatives, axis=1) - negatives
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    return np.where(pairs > 0, (positives * (below + 0.5 * negatives)).sum(axis=1) / pairs, np.nan)


@dataclass(frozen=True)
class Scored:
    """One model's outputs on the test rows and how they are turned into classes."""

    name: str
    outputs: np.ndarray
    threshold: float = 0.5


@dataclass
class Evidence:
    """The test rows the gate weighs models on: their labels, the primary metric, and the one set of bootstrap
    resamples every model and slice is scored on. A model's values over the resamples on all rows are computed
    once, however many comparisons and slices use them."""

    bootstrap: Bootstrap
    metric: str
    task: str
    n_classes: int
    y: np.ndarray
    _scored: dict[int, tuple[np.ndarray, float, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def draw(
        cls, y: np.ndarray, metric: str, task: str, n_classes: int, seed: int, resamples: int = RESAMPLES
    ) -> Evidence:
        return cls(Bootstrap.draw(len(y), seed, resamples), metric, task, n_classes, y)

    def distribution(self, model: Scored, mask: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """The model's metric on the rows (all, or those of `mask`) and on each resample."""
        if mask is None and (cached := self._scored.get(id(model.outputs))) and cached[0] is model.outputs:
            return cached[1], cached[2]
        score = metric_scorer(self.metric, self.task, self.n_classes, model.threshold)
        value, values = self.bootstrap.distribution(score, self.y, model.outputs, mask)
        if mask is None:
            self._scored[id(model.outputs)] = (model.outputs, value, values)
        return value, values

    def interval(self, model: Scored) -> tuple[float, float | None, float | None]:
        """The model's metric on every row, and its interval."""
        value, values = self.distribution(model)
        return (value, *interval(values))

    def compare(self, candidate: Scored, other: Scored, mask: np.ndarray | None = None) -> dict[str, Any]:
        """Candidate against `other` on the same resamples: both values, the difference, its interval, and the
        share of resamples in which the candidate is better."""
        mine, mine_values = self.distribution(candidate, mask)
        theirs, their_values = self.distribution(other, mask)
        low, high = interval(mine_values - their_values)
        return {
            "against": other.name,
            "metric": self.metric,
            "candidate": mine,
            "other": theirs,
            "difference": mine - theirs,
            "low": low,
            "high": high,
            "p_better": better_share(self.metric, mine_values - their_values),
            "rows": int(self.bootstrap.rows if mask is None else mask.sum()),
            "resamples": len(self.bootstrap.counts),
        }

    def comparison(self, candidate: Scored, other: Scored) -> Any:
        """`compare` on every row, as the typed record."""
        from kerasflow.records import Comparison

        return Comparison(**self.compare(candidate, other))

    def point(self, model: Scored | None, mask: np.ndarray) -> float | None:
        """The model's metric on the rows of `mask` (None without a model, or where it is undefined there)."""
        if model is None or not mask.any():
            return None
        found = weighted_scores(
            self.metric,
            self.task,
            self.y[mask],
            model.outputs[mask],
            self.n_classes,
            model.threshold,
            np.ones((1, mask.sum())),
        )
        return float(found[0]) if np.isfinite(found[0]) else None

    def slices(
        self,
        candidate: Scored,
        labels: dict[str, np.ndarray],
        baseline: Scored | None = None,
        champion: Scored | None = None,
    ) -> list[Any]:
        """The primary metric on all rows, then on each slice of each column in `labels` (each row's slice, as
        `slice_labels` gives it; largest slices first, `other` and `missing` last): the candidate's with its
        interval, the baseline's and the champion's."""
        from kerasflow.records import SliceScore

        def scored(column: str, value: str, mask: np.ndarray | None) -> SliceScore:
            found, values = self.distribution(candidate, mask)
            low, high = interval(values)
            rows = np.ones(len(self.y), dtype=bool) if mask is None else mask
            return SliceScore(
                column,
                value,
                int(rows.sum()),
                float(found) if np.isfinite(found) else None,
                low,
                high,
                self.point(baseline, rows),
                self.point(champion, rows),
            )

        found = [scored("", "all rows", None)]
        for column, rows in labels.items():
            names, counts = np.unique(rows.astype(str), return_counts=True)
            order = sorted(
                zip(names, counts, strict=True), key=lambda item: (item[0] in ("other", "missing"), -item[1])
            )
            found += [scored(column, str(name), rows.astype(str) == name) for name, _ in order]
        return found


def slice_labels(values: pd.Series, kind: str, levels: int, bins: int) -> np.ndarray:
    """Each test row's slice of one column: a categorical column's most frequent `levels` values (the rest
    `other`), a numeric column's quantile bin (of `bins`); `missing` for a gap."""
    labels = np.full(len(values), "missing", dtype=object)
    present = values.notna().to_numpy().copy()
    if kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        present &= np.isfinite(numbers)
        if present.any():
            edges = np.unique(np.quantile(numbers[present], np.linspace(0, 1, bins + 1)))
            if len(edges) == 1:
                labels[present] = f"{edges[0]:.4g}"
            else:
                index = np.clip(np.searchsorted(edges, numbers[present], side="right") - 1, 0, len(edges) - 2)
                names = [
                    f"[{edges[i]:.4g}, {edges[i + 1]:.4g}{']' if i == len(edges) - 2 else ')'}"
                    for i in range(len(edges) - 1)
                ]
                labels[present] = np.asarray(names, dtype=object)[index]
        return labels
    text = values.astype("string").fillna(MISSING).astype(str)
    kept = text[present].value_counts().index[:levels]
    labels[present] = np.where(text[present].isin(kept), text[present], "other")
    return labels


def worst_slice(slices: list[Any], metric: str, min_rows: int) -> Any:
    """The slice with enough rows on which the candidate trails the champion most (None: none trails)."""
    worst, worst_gap = None, 0.0
    for entry in slices[1:]:
        if entry.rows < min_rows or entry.candidate is None or entry.champion is None:
            continue
        gap = entry.candidate - entry.champion if lower_is_better(metric) else entry.champion - entry.candidate
        if gap > worst_gap:
            worst, worst_gap = entry, gap
    return worst
