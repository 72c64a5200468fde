"""Drift against the training split: statistics kept with the model, new rows counted batch by batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow.model_interface import InputColumn, ModelInputs
from kerasflow.records import summary_line
from tasks.drift import (
    DriftCounter,
    DriftReport,
    TrainingStatistics,
    beyond_noise,
    psi,
    training_statistics,
)

INPUTS = ModelInputs(
    "columns",
    (
        InputColumn("rm", "numeric", "numeric"),
        InputColumn("age", "numeric", "numeric"),
        InputColumn("zone", "zone", "categorical"),
    ),
)


def training(rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "rm": rng.normal(6.0, 0.7, rows),
            "age": rng.uniform(0, 100, rows),
            "zone": rng.choice(["north", "south", "east"], rows, p=[0.5, 0.3, 0.2]),
        }
    )


def counted(new: pd.DataFrame, statistics: TrainingStatistics, batches: int = 4) -> DriftReport:
    counter = DriftCounter(statistics, INPUTS)
    for part in np.array_split(np.arange(len(new)), batches):  # batch by batch, as predict reads
        counter.add(new.iloc[part])
    return counter.report(psi_threshold=0.2, unseen_threshold=0.05, missing_threshold=0.1)


def test_a_shifted_column_is_flagged_and_an_unshifted_one_is_not():
    statistics = training_statistics(training(), INPUTS)
    new = training(2000, seed=1)
    new["rm"] = new["rm"] + 2.0  # two standard deviations up
    report = counted(new, statistics)
    assert report.drifted == ["rm"] and report.rows == 2000
    assert report.columns["rm"].psi > 2 and report.columns["age"].psi < 0.05
    assert summary_line(report).startswith("drift: rm PSI ")


def test_the_same_distribution_is_not_drift():
    report = counted(training(2000, seed=2), training_statistics(training(), INPUTS))
    assert report.drifted == [] and summary_line(report) == "drift: none past the thresholds"


def test_a_small_batch_of_training_like_rows_is_not_drift_but_a_real_shift_in_it_is():
    statistics = training_statistics(training(), INPUTS)
    # 50 rows drawn like the training split: their PSI is about (bins - 1) / 50 by sampling alone, near 0.2.
    alarms = 0
    for seed in range(40):
        report = counted(training(50, seed=100 + seed), statistics, batches=1)
        alarms += bool(report.drifted)
    assert alarms <= 4  # about the 5 % false-alarm rate shared among the columns (PSI > 0.2 alone: 30 of 40)
    assert not beyond_noise([0.1] * 10, [5] * 10) and beyond_noise([0.1] * 10, [40] + [1] * 9)
    shifted = training(50, seed=7)
    shifted["rm"] = shifted["rm"] + 2.0
    assert counted(shifted, statistics, batches=1).drifted == ["rm"]


def test_unseen_categories_and_missing_values_are_counted():
    statistics = training_statistics(training(), INPUTS)
    new = training(1000, seed=3)
    new.loc[:99, "zone"] = "atlantis"  # 10% a category training never had
    new.loc[:299, "age"] = np.nan  # 30% missing, none in training
    report = counted(new, statistics)
    zone, age = report.columns["zone"], report.columns["age"]
    assert zone.unseen_share == pytest.approx(0.1) and zone.unseen_examples == {"atlantis": 100}
    assert age.missing_share_training == 0 and age.missing_share_new == pytest.approx(0.3)
    assert sorted(report.drifted) == ["age", "zone"]
    assert "missing 0.0% -> 30.0%" in age.reasons and zone.reasons == ["unseen categories 10.0%"]
    # As written beside the predictions: a number's PSI, a category's unseen share and examples, nothing absent.
    on_disk = report.to_dict()
    assert on_disk["drifted"] == report.drifted and on_disk["thresholds"]["psi"] == 0.2
    assert list(on_disk["columns"]["zone"]) == [
        "kind", "missing_share_training", "missing_share_new", "unseen_share", "unseen_examples", "drifted", "reasons",
    ]  # fmt: skip
    assert list(on_disk["columns"]["age"]) == [
        "kind", "missing_share_training", "missing_share_new", "psi", "drifted", "reasons",
    ]  # fmt: skip
    assert DriftReport.from_dict(on_disk) == report


def test_a_model_without_training_statistics_is_not_checked():
    assert summary_line(None) == "drift: not checked (the model carries no training statistics)"


def test_statistics_round_trip_and_describe_the_training_split():
    frame = training()
    frame.loc[:399, "rm"] = np.nan
    statistics = training_statistics(frame, INPUTS)
    again = TrainingStatistics.from_dict(statistics.to_dict())
    assert again == statistics
    rm = statistics.numeric["rm"]
    assert rm.missing_share == pytest.approx(0.1) and len(rm.edges) == 9 and sum(rm.shares) == pytest.approx(1)
    assert rm.mean == pytest.approx(6.0, abs=0.05) and rm.std == pytest.approx(0.7, abs=0.05)
    assert statistics.categorical["zone"].shares["north"] == pytest.approx(0.5, abs=0.03)


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    assert np.isfinite(psi([0.5, 0.5], [1.0, 0.0]))  # an empty bin is a large term, never infinite


def test_image_models_drift_on_each_images_mean_pixel():
    inputs = ModelInputs.images([8, 8, 1])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(500, 8, 8, 1))
    statistics = training_statistics(images, inputs)
    counter = DriftCounter(statistics, inputs)
    counter.add(np.clip(images * 1.6, 0, 16))  # brighter
    assert counter.report(0.2, 0.05, 0.1).drifted == ["pixel_mean"]
