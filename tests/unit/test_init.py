"""`kerasflow init` reads the data it describes: every row counted, a seeded sample across the whole file, the
columns that would mislead the model left out by name, and a gate a useful model can pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.init import SAMPLE_ROWS, plan_project, read_profile, shown
from kerasflow.config import ConfigError


def write_csv(frame: pd.DataFrame, path):
    frame.to_csv(path, index=False)
    return path


def test_the_sample_is_drawn_across_the_whole_file_and_the_target_counted_on_every_row(tmp_path):
    # Sorted by the target, as a file sorted by date would be: the first megabyte holds one class only.
    rows = 200_000
    labels = np.repeat(["a", "b", "c"], [120_000, 60_000, 20_000])
    frame = pd.DataFrame({"x": np.arange(rows) * 0.5, "note": "constant text", "label": labels})
    path = write_csv(frame, tmp_path / "sorted.csv")
    profile = read_profile(path, "label")
    assert profile.rows == rows and profile.target_counts == {"a": 120_000, "b": 60_000, "c": 20_000}
    assert len(profile.sample) == SAMPLE_ROWS
    assert set(profile.sample["label"]) == {"a", "b", "c"} and profile.sample["x"].max() > 0.9 * rows * 0.5
    assert profile.sample["x"].is_monotonic_increasing  # in file order
    # The same seed, the same sample.
    assert profile.sample.equals(read_profile(path, "label").sample)


def test_a_wide_file_is_read_whole(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(83, 3000)), columns=[f"c{i}" for i in range(3000)])
    frame["grade"] = np.arange(83) % 4
    params, reasons = plan_project(write_csv(frame, tmp_path / "wide.csv"), "grade", tmp_path)
    assert "ingest.task = 'classification': the target holds 4 distinct whole numbers" in reasons
    assert params.evaluate.primary_metric == "accuracy"


def test_identifiers_row_numbers_empty_and_constant_columns_are_left_out_by_name(tmp_path):
    rng = np.random.default_rng(1)
    rows = 400
    frame = pd.DataFrame(
        {
            "Unnamed: 0": np.arange(rows),
            "name": [f"car model {i}" for i in rng.permutation(rows)],
            "maker": rng.choice(["ford", "fiat", "audi"], rows),
            "weight": rng.normal(1500, 200, rows),
            "serial": rng.permutation(rows) * 7,  # whole numbers, all distinct, but neither sorted nor named as an id
            "empty": np.nan,
            "country": "US",
            "mpg": rng.normal(25, 5, rows),
        }
    )
    params, reasons = plan_project(write_csv(frame, tmp_path / "cars.csv"), "mpg", tmp_path)
    left_out = {line.split("'")[1] for line in reasons if line.startswith("left out ")}
    assert left_out == {"Unnamed: 0", "name", "empty", "country"}
    assert any("'name': an identifier (400 distinct values" in line for line in reasons)
    assert set(params.ingest.features) == {"maker", "weight", "serial"}


def test_nested_parquet_columns_are_left_out_and_a_missing_target_is_named_with_its_setting(tmp_path):
    rows = 60
    target = pa.array([None if i % 10 == 0 else float(i % 7) * 1.5 for i in range(rows)])
    table = pa.table(
        {
            "size": pa.array(np.linspace(1, 2, rows)),
            "tags": pa.array([[f"t{i % 3}"] for i in range(rows)]),
            "meta": pa.array([{"a": i} for i in range(rows)]),
            "price": target,
        }
    )
    pq.write_table(table, tmp_path / "houses.parquet")
    params, reasons = plan_project(tmp_path / "houses.parquet", "price", tmp_path)
    assert params.ingest.features == ["size"]
    assert any(line.startswith("left out 'tags': nested") for line in reasons)
    assert params.ingest.drop_missing_target is True
    assert any("6 of 60 rows have no 'price'" in line for line in reasons)
    # Without gaps in the target, nothing is dropped.
    complete = pd.DataFrame({"size": np.linspace(1, 2, rows), "price": np.arange(rows) * 1.5})
    params, _ = plan_project(write_csv(complete, tmp_path / "complete.csv"), "price", tmp_path)
    assert params.ingest.drop_missing_target is False


@pytest.mark.parametrize(("positives", "metric"), [(0.033, "roc_auc"), (0.4, "accuracy")])
def test_the_gate_follows_the_balance_of_the_classes(tmp_path, positives, metric):
    rng = np.random.default_rng(2)
    rows = 3000
    frame = pd.DataFrame({"x": rng.normal(size=rows), "default": (rng.random(rows) < positives).astype(int)})
    params, _ = plan_project(write_csv(frame, tmp_path / "credit.csv"), "default", tmp_path)
    assert params.evaluate.primary_metric == metric
    majority = 1 - frame["default"].mean()
    if metric == "roc_auc":
        assert params.register_.thresholds == {"roc_auc": 0.6}
    else:
        # A tenth of the majority rule's errors removed: reachable, unlike "majority + 1 point" on 96.7 %.
        assert params.register_.thresholds["accuracy"] == pytest.approx(majority + 0.1 * (1 - majority), abs=1e-3)
    assert params.model.decision_threshold == "auto"


def test_a_table_gets_the_tabular_recipe_sized_by_its_rows(tmp_path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=1300), "city": rng.choice([f"c{i}" for i in range(40)], 1300)})
    frame["y"] = frame["x"] * 2 + rng.normal(size=1300)
    params, _ = plan_project(write_csv(frame, tmp_path / "t.csv"), "y", tmp_path)
    assert params.preprocess.scaling == "standard" and params.preprocess.numeric_encoding == "piecewise_linear"
    assert params.preprocess.categorical_encoding == "auto" and params.model.ensemble > 1
    assert params.model.linear_skip  # wide and deep from 1,250 rows: the linear baseline's form is inside the model
    small, _ = plan_project(write_csv(frame.head(1200), tmp_path / "small.csv"), "y", tmp_path)
    assert not small.model.linear_skip  # below it, no wide layer: it would learn from every fold
    # Below it, soft decision trees beside the MLP, both reading the input, joined (the Functional API).
    trees = [layer for layer in small.model.layers if layer.type == "oblivious_trees"]
    assert small.model.api == "functional" and len(trees) == 1 and trees[0].inputs == ["input"]
    assert small.model.layers[-1].type == "concatenate" and small.model.layers[-1].inputs == ["mlp", "trees"]
    assert params.model.api == "sequential" and "oblivious_trees" not in [layer.type for layer in params.model.layers]
    # Below it, the members are cross-fitted (k-fold bagging): every labelled row of a small table trains and validates.
    assert small.train.cross_fit and small.model.ensemble >= 2 and not params.train.cross_fit
    assert small.train.epochs == 300 and small.train.early_stopping.monitor == "val_loss"  # the rest of train is kept
    assert params.model.optimizer.name == "adamw" and params.model.optimizer.weight_decay > 0
    assert params.train.epochs == 300 and params.train.early_stopping.patience >= 20  # small: long and patient
    assert "model" in params.tune.space and [] in [choice["layers"] for choice in params.tune.space["model"].choice]


@pytest.mark.parametrize(
    ("rows", "length", "mode", "cross_fit"),
    [(2000, 8, "tf_idf", True), (24_000, 20, "tf_idf", False), (60_000, 8, "int", False)],
)
def test_text_gets_ngrams_or_a_sequence_model_by_samples_per_word(tmp_path, rows, length, mode, cross_fit):
    rng = np.random.default_rng(4)
    words = np.array(["good", "bad", "film", "plot", "actor", "long", "dull", "great", "not", "very"])
    texts = [" ".join(rng.choice(words, length)) for _ in range(rows)]
    frame = pd.DataFrame({"review": texts, "liked": rng.integers(0, 2, rows)})
    params, _ = plan_project(write_csv(frame, tmp_path / "reviews.csv"), "liked", tmp_path)
    assert params.ingest.text_column == "review" and params.preprocess.text.output_mode == mode
    assert not params.model.linear_skip  # the tabular recipe's wide layer is for tables
    if mode == "int":
        assert params.model.layers[0].type == "embedding" and params.model.layers[0].arguments["mask_zero"] is True
        assert params.model.input_dropout == 0  # token ids are not numbers to drop
    else:
        assert params.preprocess.text.ngrams == 2 and params.preprocess.text.words_first
        # A linear model over the TF-IDF, its input dropout drawn once for every member.
        assert params.model.layers == [] and params.model.input_dropout == 0.5
    # Under 20,000 texts the bag of n-grams' linear models are cross-fitted, as a small table's MLPs; from there
    # (and for a sequence model) one model and one validation split.
    assert params.train.cross_fit == cross_fit and params.model.ensemble == (4 if cross_fit else 1)


def test_bad_files_are_one_clear_error(tmp_path):
    (tmp_path / "dup.csv").write_text("a,a,y\n1,2,3\n")
    with pytest.raises(ConfigError, match=r"dup.csv: column name\(s\) \['a'\] appear more than once"):
        read_profile(tmp_path / "dup.csv", "y")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="no column 'y'"):
        read_profile(tmp_path / "t.csv", "y")
    assert shown([f"c{i}" for i in range(10)], 3) == "['c0', 'c1', 'c2', …]" and shown(["a"]) == "['a']"


def test_text_standing_for_missing_numbers_deep_in_a_csv_is_read_as_missing(tmp_path):
    rows = 120_000  # past pyarrow's first block, which decides the column is numbers
    frame = pd.DataFrame({"signal": np.arange(rows) * 0.5, "glucose": np.arange(rows) % 97 * 1.5})
    frame["signal"] = frame["signal"].astype(object)
    frame.loc[[100_000, 110_000], "signal"] = "nil"
    params, reasons = plan_project(write_csv(frame, tmp_path / "cgm.csv"), "glucose", tmp_path)
    assert params.ingest.missing_values == ["nil"] and "signal" in params.ingest.features
    assert any(line.startswith("ingest.missing_values = ['nil']") for line in reasons)
    # A file without such text needs none.
    clean = frame.assign(signal=np.arange(rows) * 0.25)
    params, _ = plan_project(write_csv(clean, tmp_path / "clean.csv"), "glucose", tmp_path)
    assert params.ingest.missing_values == []


def test_categorical_columns_of_few_values_are_proposed_as_slices(tmp_path):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=400),
            "region": rng.choice(["n", "s", "e"], 400),
            "city": rng.choice([f"c{i}" for i in range(40)], 400),
            "plan": rng.choice(["basic", "pro"], 400),
        }
    )
    frame["churn"] = (frame["x"] > 0).astype(int)
    params, _ = plan_project(write_csv(frame, tmp_path / "c.csv"), "churn", tmp_path)
    # Fewest values first; a column of 40 values is no slice; a numeric one is not proposed.
    assert params.evaluate.slices == ["plan", "region"]
    numeric_only = frame[["x", "churn"]]
    params, _ = plan_project(write_csv(numeric_only, tmp_path / "n.csv"), "churn", tmp_path)
    assert params.evaluate.slices == []
