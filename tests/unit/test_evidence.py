"""The gate's evidence: weighted metrics, the paired bootstrap and the slices (tasks/evidence.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import score_predictions
from tasks.evidence import Bootstrap, Evidence, Scored, slice_labels, weighted_scores, worst_slice


def models(task: str, classes: int, rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if task == "regression":
        y = rng.normal(size=rows)
        return y, y + rng.normal(scale=0.5, size=rows)
    y = rng.integers(0, classes, rows)
    if classes == 2:
        return y, np.clip(0.3 * y + 0.7 * rng.random(rows), 0, 1).astype("float32")
    outputs = rng.random((rows, classes))
    outputs[np.arange(rows), y] += 0.6
    return y, (outputs / outputs.sum(axis=1, keepdims=True)).astype("float32")


@pytest.mark.parametrize(("task", "classes"), [("classification", 2), ("classification", 5), ("regression", 0)])
def test_weighted_scores_with_every_weight_one_are_scikit_learns(task, classes):
    y, outputs = models(task, classes)
    expected = score_predictions(task, y, outputs, classes, 0.5)
    for metric, value in expected.items():
        found = weighted_scores(metric, task, y, outputs, classes, 0.5, np.ones((1, len(y))))
        assert found[0] == pytest.approx(value, abs=1e-9), metric
    # Counts are weights: a row drawn twice counts as two copies of it.
    twice = np.ones((1, len(y)))
    twice[0, :50] = 2
    copied = np.concatenate([np.arange(len(y)), np.arange(50)])
    for metric in expected:
        found = weighted_scores(metric, task, y, outputs, classes, 0.5, twice)[0]
        assert found == pytest.approx(score_predictions(task, y[copied], outputs[copied], classes, 0.5)[metric])


def test_an_undefined_metric_is_nan_not_a_number_made_up():
    y = np.zeros(10, dtype="int64")  # one class only: no ROC AUC
    assert np.isnan(weighted_scores("roc_auc", "classification", y, np.full(10, 0.3), 2, 0.5, np.ones((1, 10))))[0]
    constant = np.ones(10)  # a constant target: no R²
    assert np.isnan(weighted_scores("r2", "regression", constant, constant, 0, 0.5, np.ones((1, 10))))[0]


def test_the_same_model_twice_is_never_better_and_a_better_one_is():
    y, outputs = models("classification", 2, rows=300)
    rows = Evidence.draw(y, "accuracy", "classification", 2, seed=1)
    same = rows.compare(Scored("a", outputs), Scored("b", outputs))
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and same["p_better"] == 0
    noise = np.random.default_rng(2).random(len(y)).astype("float32")
    better = rows.compare(Scored("a", outputs), Scored("coin", noise))
    assert better["low"] > 0 and better["p_better"] == 1.0
    assert better["difference"] == pytest.approx(better["candidate"] - better["other"])
    # Errors point the other way: lower RMSE is better.
    target, close = models("regression", 0)
    far = close + 1.0
    rmse = Evidence.draw(target, "rmse", "regression", 0, seed=0).compare(Scored("a", close), Scored("b", far))
    assert rmse["difference"] < 0 and rmse["p_better"] == 1.0


def test_the_bootstrap_is_seeded_and_a_large_split_is_sampled_with_its_spread_narrowed():
    y, outputs = models("classification", 2, rows=8000)
    score = lambda y, out, weights: weighted_scores("accuracy", "classification", y, out, 2, 0.5, weights)  # noqa: E731
    assert np.array_equal(Bootstrap.draw(8000, 3).counts, Bootstrap.draw(8000, 3).counts)
    full_value, every_row = Bootstrap.draw(8000, 3).distribution(score, y, outputs)
    sampled = Bootstrap.draw(8000, 3, max_rows=2000)
    assert sampled.counts.shape == (1000, 2000) and sampled.scale == pytest.approx(0.5)
    value, narrowed = sampled.distribution(score, y, outputs)
    # The point is every row's; the spread is close to that of resampling every row, not twice as wide.
    assert value == full_value
    assert np.std(narrowed) == pytest.approx(np.std(every_row), rel=0.2)
    assert abs(np.mean(narrowed) - value) < 0.5 * np.std(every_row)


def test_slices_of_a_categorical_and_a_numeric_column():
    region = pd.Series(["n"] * 50 + ["s"] * 30 + ["e"] * 15 + ["w"] * 4 + [None])
    labels = slice_labels(region, "categorical", levels=2, bins=4)
    assert list(pd.Series(labels).value_counts().items()) == [("n", 50), ("s", 30), ("other", 19), ("missing", 1)]
    size = pd.Series([*range(99), np.nan])
    bins = slice_labels(size, "numeric", levels=8, bins=4)
    counts = pd.Series(bins).value_counts()
    assert counts["missing"] == 1 and len(counts) == 5 and counts.drop("missing").between(24, 26).all()
    assert "[0, 24.5)" in counts.index and "[73.5, 98]" in counts.index


def test_slice_scores_put_all_rows_first_and_name_the_slice_that_got_worse():
    y = np.arange(200) % 2
    champion = Scored("champion", y.astype("float32"))  # right everywhere
    wrong = y.astype("float32").copy()
    wrong[:20] = 1 - wrong[:20]  # wrong on 20 of the 100 `a` rows
    labels = {"group": np.array(["a"] * 100 + ["b"] * 100)}
    rows = Evidence.draw(y, "accuracy", "classification", 2, seed=0)
    candidate = Scored("c", wrong)
    found = rows.slices(candidate, labels, champion=champion)
    assert [entry.key for entry in found] == ["all rows", "group=a", "group=b"]
    assert found[1].candidate == 0.8 and found[1].champion == 1.0 and found[1].low < 0.8 < found[1].high
    assert worst_slice(found, "accuracy", min_rows=50).key == "group=a"
    assert worst_slice(found, "accuracy", min_rows=101) is None
    # The candidate's values on all rows are computed once: the "all rows" slice and a comparison reuse them.
    value, values = rows.distribution(candidate)
    assert rows.distribution(candidate)[1] is values and rows.compare(candidate, champion)["candidate"] == value
    assert rows.distribution(Scored("c", wrong.copy()))[1] is not values  # other outputs: scored anew


def test_the_model_card_says_how_sure_where_weak_and_why_in_tables_that_keep_their_columns_apart():
    from kerasflow import notes
    from kerasflow.model_interface import InputColumn, ModelInputs
    from kerasflow.records import ChampionScore, Comparison, Evaluation, PreprocessState, SliceScore

    versus = Comparison("the champion (version 3)", "accuracy", 0.85, 0.8, 0.05, 0.0, 0.15, 0.64, 20, 1000)
    slices = [
        SliceScore("", "all rows", 20, 0.85, 0.7, 1.0, 0.75, 0.8),
        SliceScore("region", "north", 12, 0.75, 0.5, 1.0, 0.7, 0.8),
        SliceScore("region", "south", 8, 1.0, 1.0, 1.0, 0.8, 0.8),
    ]
    evaluation = Evaluation(
        "classification", "accuracy", {"accuracy": 0.85}, {"accuracy": 0.75}, 80,
        True, 20, champion_rescored=ChampionScore("3", test={"accuracy": 0.8}, test_rows=20, comparison=versus),
        interval=[0.7, 1.0], slices=slices, epochs_trained=12, best_epoch=9, baseline_name="LogisticRegression",
    )  # fmt: skip
    inputs = ModelInputs(
        "columns", (InputColumn("size", "size", "numeric"), InputColumn("region", "region", "categorical"))
    )
    state = PreprocessState(
        "classification", inputs, "bought", ["size", "region"], {"train": 60, "val": 20, "test": 20}, 0, "abc123",
        classes=["no", "yes"], class_counts=[48, 12],
    )  # fmt: skip
    decision = {"alias": "challenger", "reasons": ["accuracy 0.8500 is better than, but not surely better than, …"]}
    run = {"run_id": "r1", "task": "classification", "source": "file:shop.csv"}
    card = notes.model_card(notes.CardFacts("shop", "4", run, evaluation, decision, ["size", "region"], state=state,
                                            drift={"psi": 0.2}, min_slice_rows=10))  # fmt: skip
    for heading in (
        "## Data",
        "## Test results (20 rows)",
        "## Slices",
        "## Decision",
        "## Training",
        "## Known limits",
    ):
        assert heading in card
    assert "md5 `abc123`" in card and "1 numeric (`size`); 1 categorical (`region`)" in card
    assert "| accuracy&emsp; | **0.8500** (0.7000–1.0000)&emsp; | 0.7500&emsp; | 0.8000&emsp; |" in card
    assert "The candidate beats the champion (version 3) by 0.0500 (95 % interval of the difference" in card
    assert "Weakest slice: **region=north** (12 rows), accuracy 0.7500." in card
    assert "on 20 test rows, one row is 5.0 points of accuracy" in card and "`yes`" in card
    assert "Classes with fewer than 30 training rows: yes." in card
    assert "12 epochs; the weights of epoch 9 kept." in card and "models:/shop/4" in card


def test_the_card_and_the_terminal_say_how_each_reference_was_made():
    from kerasflow.notes import reference_settings

    assert reference_settings("HistGradientBoosting") == "scikit-learn, default settings"
    # The text reference is not scikit-learn's defaults: it says what it is.
    text = reference_settings("TfidfLogisticRegression")
    assert "default" not in text and "word pairs" in text and "C 4" in text
    assert "ridge, alpha 1" in reference_settings("TfidfRidge") and "C 4" not in reference_settings("TfidfRidge")
