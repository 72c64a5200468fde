"""The quality benchmark's reference learns from the rows the model learnt from."""

import json

import numpy as np
import pandas as pd

from bench.quality import Dataset, reference_score


def test_the_reference_of_a_cross_fitted_run_learns_from_the_training_and_validation_rows(tmp_path):
    rng = np.random.default_rng(0)
    # Training rows: x below 0 is class 0, above is class 1. Validation (and test) rows: x near 10, class 0,
    # which the training rows alone would call class 1.
    x_train = np.concatenate([rng.uniform(-2, -1, 60), rng.uniform(1, 2, 60)])
    train = pd.DataFrame({"x": x_train, "__label__": (x_train > 0).astype(int)})
    val = pd.DataFrame({"x": rng.uniform(9.5, 10.5, 60), "__label__": 0})
    train.to_parquet(tmp_path / "train.parquet")
    val.to_parquet(tmp_path / "val.parquet")
    val.to_parquet(tmp_path / "test.parquet")
    (tmp_path / "state.json").write_text(json.dumps({"inputs": {"columns": [{"column": "x", "kind": "numeric"}]}}))
    dataset = Dataset("toy", "here", "y", "classification", "accuracy", lambda: train)

    assert reference_score(tmp_path, dataset) == ("HistGradientBoosting", 0.0)
    assert reference_score(tmp_path, dataset, pooled=True) == ("HistGradientBoosting", 1.0)
