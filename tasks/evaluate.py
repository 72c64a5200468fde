"""Evaluate: test-split metrics for the model and a scikit-learn baseline, plus plot data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kerasflow.config import EvaluateParams
from kerasflow.model_interface import MISSING, ModelInputs, positive_share, predicted_classes
from kerasflow.plotting import pyplot, save_figure
from kerasflow.records import FittedInputs
from tasks.preprocess import LABEL, ParquetSplit, Split
from tasks.sampling import SmallestRows, hash_positions


def primary_metric(params: EvaluateParams, task: str) -> str:
    if params.primary_metric != "auto":
        return params.primary_metric
    return "accuracy" if task == "classification" else "r2"


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, metric: str) -> float:
    """The decision threshold of a binary classifier that scores best on these rows (the validation split): for
    accuracy when that is `metric`, else for macro F1 (what precision, recall and the threshold-free ROC AUC and
    loss leave open). A threshold only moves from 0.5 for a strictly better score; among equal scores, the one
    nearest 0.5 is taken."""
    y_true = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores, dtype="float64").reshape(-1)
    if len(np.unique(y_true)) < 2:
        return 0.5
    candidates = np.unique(np.concatenate([np.quantile(scores, np.linspace(0.01, 0.99, 99)), [0.5]]))
    candidates = candidates[(candidates > 0) & (candidates < 1)]

    def score(threshold: float) -> float:
        predicted = (scores >= threshold).astype("int64")
        if metric == "accuracy":
            return float(np.mean(predicted == y_true))
        return float(skm.f1_score(y_true, predicted, average="macro", zero_division=0))

    best, best_score = 0.5, score(0.5)
    for threshold in sorted(candidates, key=lambda value: abs(value - 0.5)):
        found = score(float(threshold))
        if found > best_score + 1e-12:
            best, best_score = float(threshold), found
    return round(best, 6)


def fixed_threshold(setting: float | str) -> float:
    """model.decision_threshold as a number: `auto` is 0.5 until train chooses one on the validation split."""
    return 0.5 if setting == "auto" else float(setting)


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, n_classes: int, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy, macro precision / recall / F1 (at `threshold` for two classes) and ROC AUC."""
    positive = positive_share(probabilities)
    predicted = predicted_classes(probabilities, threshold)
    scores: np.ndarray = positive if positive is not None else probabilities
    result = {
        "accuracy": skm.accuracy_score(y_true, predicted),
        "precision": skm.precision_score(y_true, predicted, average="macro", zero_division=0),
        "recall": skm.recall_score(y_true, predicted, average="macro", zero_division=0),
        "f1": skm.f1_score(y_true, predicted, average="macro", zero_division=0),
    }
    if len(np.unique(y_true)) == max(n_classes, 2):
        if scores.ndim == 1:
            result["roc_auc"] = skm.roc_auc_score(y_true, scores)
        else:
            # Softmax rows can miss summing to one by float32 rounding; sklearn insists they do.
            scores = scores / scores.sum(axis=1, keepdims=True)
            result["roc_auc"] = skm.roc_auc_score(y_true, scores, multi_class="ovr", labels=list(range(n_classes)))
    return {name: float(value) for name, value in result.items()}


def per_class_metrics(
    y_true: np.ndarray, outputs: np.ndarray, classes: list[Any], threshold: float = 0.5
) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 of each class (and how many test rows it has), keyed by the class label."""
    predicted = predicted_classes(outputs, threshold)
    indices = list(range(len(classes)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, predicted, labels=indices, zero_division=0
    )
    return {
        str(label): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }


def regression_metrics(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    predicted = predicted.reshape(-1)
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, predicted))),
        "mae": float(skm.mean_absolute_error(y_true, predicted)),
        "r2": float(skm.r2_score(y_true, predicted)),
    }


def score_predictions(
    task: str, y_true: np.ndarray, outputs: np.ndarray, n_classes: int, threshold: float = 0.5
) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(y_true, outputs, n_classes, threshold)
    return regression_metrics(y_true, outputs)


def baseline_features(inputs: ModelInputs) -> Any:
    """scikit-learn's version of the model's input preprocessing: scaling, imputation, one-hot, TF-IDF."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    if inputs.kind == "image":
        return make_pipeline(FunctionTransformer(lambda x: np.asarray(x).reshape(len(x), -1)), StandardScaler())
    # Missing strings become MISSING in the model's lookups; the same here.
    as_text = FunctionTransformer(lambda x: x.astype("string").fillna(MISSING).astype(str))
    parts = []
    for entry in inputs.columns:
        column = entry.column
        if entry.kind == "numeric":
            steps = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler())
            parts.append((f"numeric_{column}", steps, [column]))
        elif entry.kind == "categorical":
            steps = make_pipeline(as_text, OneHotEncoder(handle_unknown="ignore"))
            parts.append((f"categorical_{column}", steps, [column]))
        else:
            parts.append((f"text_{column}", make_pipeline(as_text, TfidfVectorizer(max_features=20000)), column))
    return ColumnTransformer(parts)


def make_baseline(params: EvaluateParams, task: str, seed: int, inputs: ModelInputs) -> Any:
    name = params.baseline
    if name == "auto":
        name = "logistic_regression" if task == "classification" else "ridge"
    estimators = {
        "logistic_regression": lambda: LogisticRegression(max_iter=2000, random_state=seed),
        "knn": lambda: KNeighborsClassifier(n_neighbors=5),
        "linear_regression": LinearRegression,
        "ridge": lambda: Ridge(alpha=1.0),
    }
    if (task == "classification") != (name in ("logistic_regression", "knn")):
        raise ValueError(f"evaluate.baseline {name!r} does not fit a {task} task")
    return make_pipeline(baseline_features(inputs), estimators[name]())


# Values (rows x features) the baseline is fitted on at most: images of many pixels get fewer rows.
BASELINE_VALUES = 20_000_000
# Salt of the baseline sample's row hash (independent of the split and of the drift sample).
BASELINE_SALT = 3


def baseline_sample(
    train: Split | ParquetSplit, rows: int, seed: int, inputs: ModelInputs, batch_rows: int = 1 << 16
) -> Split:
    """The training rows the baseline is fitted on: all of them when they are at most `rows` (and fit the
    values budget), else a seeded sample of that many, the same whatever the batching."""
    if isinstance(train, Split):
        return train
    width = int(np.prod(inputs.shape)) if inputs.kind == "image" else max(len(inputs.columns), 1)
    rows = max(1, min(rows, BASELINE_VALUES // width))
    if len(train) <= rows:
        return train.load()
    sample = SmallestRows(rows)
    start = 0
    for frame, y in train.frames(batch_rows):
        positions = np.arange(start, start + len(y))
        start += len(y)
        sample.add(hash_positions(positions, seed, BASELINE_SALT), frame.assign(**{LABEL: y}))
    kept = sample.rows().reset_index(drop=True)
    return Split(train.features(kept.drop(columns=LABEL)), kept[LABEL].to_numpy())


def baseline_outputs(baseline: Any, test: Split | ParquetSplit, task: str, batch_rows: int = 1 << 16) -> np.ndarray:
    """The fitted baseline's probabilities (positive class for two) or values, on the test rows batch by batch."""

    def outputs(x: Any) -> np.ndarray:
        if task != "classification":
            return baseline.predict(x)
        found = baseline.predict_proba(x)
        return found[:, 1] if found.shape[1] == 2 else found

    if isinstance(test, Split):
        return outputs(test.x)
    return np.concatenate([outputs(x) for x, _ in test.batches(batch_rows)])


def baseline_metrics(
    params: EvaluateParams,
    task: str,
    train_split: Split | ParquetSplit,
    test_split: Split | ParquetSplit,
    n_classes: int,
    seed: int,
    inputs: ModelInputs,
    threshold: float = 0.5,
) -> tuple[str, dict[str, float], np.ndarray]:
    """Fit the scikit-learn baseline on the training rows (a split file is sampled as `baseline_sample` does;
    the same raw features); score it on the test split. Returns its name, its scores and its outputs on the test
    rows (for the paired bootstrap)."""
    baseline = make_baseline(params, task, seed, inputs)
    sample = baseline_sample(train_split, params.baseline_rows, seed, inputs, params.batch_rows)
    baseline.fit(sample.x, sample.y)
    y_test = test_split.y if isinstance(test_split, Split) else test_split.labels()
    outputs = baseline_outputs(baseline, test_split, task, params.batch_rows)
    scores = score_predictions(task, y_test, outputs, n_classes, threshold)
    return type(baseline[-1]).__name__, scores, outputs


# Categories with at most this many levels are given to gradient boosting as categories (its limit is 255 bins).
REFERENCE_CATEGORIES = 250


def make_reference(task: str, seed: int, inputs: ModelInputs, fitted: FittedInputs) -> tuple[str, Any] | None:
    """The strong reference beside the baseline: scikit-learn's HistGradientBoosting with default settings (numbers
    as they are, gaps included; categories as categories), or TF-IDF of words and word pairs + logistic regression
    for a text column. None for images (the reference is for tables and texts)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

    if inputs.kind == "image":
        return None
    as_text = FunctionTransformer(lambda x: x.astype("string").fillna(MISSING).astype(str))
    text = [entry for entry in inputs.columns if entry.kind == "text"]
    if text:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
        estimator = LogisticRegression(max_iter=2000, C=4.0, random_state=seed)
        if task != "classification":
            estimator = Ridge(alpha=1.0)
        features = ColumnTransformer([("text", make_pipeline(as_text, vectorizer), text[0].column)])
        name = "TfidfLogisticRegression" if task == "classification" else "TfidfRidge"
        return name, make_pipeline(features, estimator)
    parts, categorical = [], []
    numeric = [entry.column for entry in inputs.columns if entry.kind == "numeric"]
    if numeric:
        parts.append(("numeric", FunctionTransformer(lambda x: x.astype("float64")), numeric))
    # The transformed columns: the numbers, then one code column per category column, in this order.
    for position, entry in enumerate(entry for entry in inputs.columns if entry.kind == "categorical"):
        encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan)
        if len(fitted.categorical.get(entry.input, [])) <= REFERENCE_CATEGORIES:
            categorical.append(len(numeric) + position)
        parts.append((f"categorical_{entry.input}", make_pipeline(as_text, encoder), [entry.column]))
    boosting = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    estimator = boosting(categorical_features=categorical or None, random_state=seed)
    return "HistGradientBoosting", make_pipeline(ColumnTransformer(parts), estimator)


def reference_metrics(
    task: str,
    sample: Split,
    test_split: Split | ParquetSplit,
    n_classes: int,
    seed: int,
    inputs: ModelInputs,
    fitted: FittedInputs,
    threshold: float = 0.5,
    batch_rows: int = 1 << 16,
) -> tuple[str, dict[str, float], np.ndarray] | None:
    """The reference fitted on the baseline's training rows and scored on the test split (None for images): its
    name, scores and outputs on the test rows."""
    made = make_reference(task, seed, inputs, fitted)
    if made is None:
        return None
    name, reference = made
    reference.fit(sample.x, sample.y)
    y_test = test_split.y if isinstance(test_split, Split) else test_split.labels()
    outputs = baseline_outputs(reference, test_split, task, batch_rows)
    return name, score_predictions(task, y_test, outputs, n_classes, threshold), outputs


def predictions_frame(
    task: str, y_true: np.ndarray, outputs: np.ndarray, classes: list[Any] | None, threshold: float = 0.5
) -> pd.DataFrame:
    """Actual and predicted values per test example (DVC's confusion / scatter plot data)."""
    if task != "classification":
        return pd.DataFrame({"actual": y_true, "predicted": outputs.reshape(-1)})
    predicted = predicted_classes(outputs, threshold)
    names = [str(label) for label in classes] if classes else None
    as_label = (lambda index: names[index]) if names else str
    return pd.DataFrame({"actual": [as_label(i) for i in y_true], "predicted": [as_label(i) for i in predicted]})


def plot_training_curves(
    history: pd.DataFrame, path: Path, best_epoch: int | None = None, title: str = "", validation: str = "validation"
) -> None:
    """Loss and each metric per epoch, training against validation (named `validation` in the legend), with the
    epoch the model keeps marked."""
    plt = pyplot()
    names = [column for column in history.columns if column != "epoch" and not column.startswith(("val_", "start_"))]
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        axis.plot(history["epoch"], history[name], label="train")
        if f"val_{name}" in history:
            axis.plot(history["epoch"], history[f"val_{name}"], label=validation)
        if f"start_val_{name}" in history:  # train.early_stopping.from_start: the start's score, epoch 0
            start = history[f"start_val_{name}"].dropna()
            axis.axhline(start.iloc[0], color="black", linestyle=":", linewidth=1, label="validation, at the start")
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept: epoch {best_epoch}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.set_title(f"{name} per epoch")
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_confusion_matrix(
    y_true: np.ndarray, predicted: np.ndarray, classes: list[Any], path: Path, title: str = ""
) -> None:
    """The confusion matrix of the test split (class indices), each row normalised to the share of that true class."""
    plt = pyplot()
    present = sorted(set(np.unique(y_true).tolist()) | set(np.unique(predicted).tolist()))
    names = [str(classes[index]) for index in present]
    order = sorted(range(len(present)), key=lambda position: (len(names[position]), names[position]))
    labels = [names[position] for position in order]
    matrix = skm.confusion_matrix(y_true, predicted, labels=[present[position] for position in order], normalize="true")
    size = 2 + 0.55 * len(labels)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    skm.ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=axis, colorbar=True, values_format=".2f")
    axis.set_title(title or f"Confusion matrix, test split ({len(y_true)} rows; rows sum to 1)")
    figure.tight_layout()
    save_figure(figure, path)


def plot_binary_curves(
    y_true: np.ndarray, outputs: np.ndarray, threshold: float, roc_path: Path, pr_path: Path
) -> None:
    """ROC and precision-recall curves of a binary classifier, with the decision threshold marked."""
    plt = pyplot()
    scores = outputs.reshape(-1)
    called = scores >= threshold
    recall = np.mean(called[y_true == 1])
    false_positive_rate = np.mean(called[y_true == 0])
    precision = np.mean(y_true[called]) if called.any() else 1.0
    for path, display, point, corner in (
        (roc_path, skm.RocCurveDisplay, (false_positive_rate, recall), "lower right"),
        (pr_path, skm.PrecisionRecallDisplay, (recall, precision), "lower left"),
    ):
        figure, axis = plt.subplots(figsize=(4.5, 4))
        display.from_predictions(y_true, scores, ax=axis, name="model")
        axis.plot(*point, "o", label=f"threshold {threshold}")
        axis.set_title(("ROC curve" if display is skm.RocCurveDisplay else "Precision-recall curve") + ", test split")
        axis.legend(loc=corner)
        figure.tight_layout()
        save_figure(figure, path)


def plot_slices(slices: list[Any], metric: str, path: Path) -> None:
    """The primary metric per slice of the test rows: the candidate with its 95 % interval, the baseline and the
    champion beside it, each slice's row count in its label."""
    plt = pyplot()
    entries = list(reversed(slices))  # all rows on top
    height = 1.8 + 0.42 * len(entries)
    figure, axis = plt.subplots(figsize=(7.5, height))
    positions = np.arange(len(entries))
    values = np.array([np.nan if entry.candidate is None else entry.candidate for entry in entries])
    low = np.array([np.nan if entry.low is None else entry.low for entry in entries])
    high = np.array([np.nan if entry.high is None else entry.high for entry in entries])
    axis.barh(positions, values, color="#4c78a8", alpha=0.8, label="candidate")
    axis.errorbar(
        values,
        positions,
        xerr=[values - low, high - values],
        fmt="none",
        ecolor="black",
        capsize=3,
        label="95 % interval",
    )
    for name, marker, color in (("baseline", "|", "#e45756"), ("champion", "D", "#f58518")):
        found = [np.nan if getattr(entry, name) is None else getattr(entry, name) for entry in entries]
        if not np.all(np.isnan(found)):
            axis.plot(
                found, positions, marker, color=color, markersize=12, markeredgewidth=2, linestyle="none", label=name
            )
    axis.set_yticks(positions, [f"{entry.key} ({entry.rows})" for entry in entries])
    axis.set_xlabel(metric)
    axis.set_title(f"{metric} per slice of the test rows (rows in brackets)")
    # The legend in a strip of its own under the axis, clear of the bars.
    figure.legend(*axis.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small", frameon=False)
    figure.tight_layout(rect=(0, 0.45 / height, 1, 1))
    save_figure(figure, path)


def save_test_outputs(path: Path, outputs: np.ndarray, loss: float) -> None:
    """The final model's outputs on the test rows (one value, or one per class, a row) and its compiled test loss."""
    np.savez(path, outputs=outputs, loss=np.float64(loss))


def load_test_outputs(path: Path, rows: int) -> tuple[np.ndarray, float]:
    """`save_test_outputs`' outputs and loss, for a test split of `rows` rows."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the train stage first (it scores the test split)")
    with np.load(path, allow_pickle=False) as saved:
        outputs, loss = saved["outputs"], float(saved["loss"])
    if len(outputs) != rows:
        raise FileNotFoundError(
            f"{path} scores {len(outputs)} test rows and the test split has {rows}: run the train stage again"
        )
    return outputs, loss
