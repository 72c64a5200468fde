"""The synthetic datasets are seeded, shaped as documented, and carry the signal they promise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kerasflow import samples

TABLES = {
    "house_prices": (samples.house_prices, ["area", "rooms", "age", "neighborhood", "condition", "garage", "price"]),
    "churn": (samples.churn, ["tenure_months", "monthly_charges", "contract", "support_calls", "churned"]),
    "reviews": (samples.reviews, ["review", "sentiment"]),
    "linear": (samples.linear, ["x1", "x2", "x3", "y"]),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_tables_are_seeded(name):
    make, columns = TABLES[name]
    first, again, other = make(rows=200, seed=1), make(rows=200, seed=1), make(rows=200, seed=2)
    assert list(first.columns) == columns and len(first) == 200
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_house_prices_have_missing_numbers_and_categories():
    frame = samples.house_prices(rows=2000, seed=0, missing=0.1)
    for column in ("area", "age", "neighborhood", "condition"):
        assert 0.05 < frame[column].isna().mean() < 0.15, column
    assert not frame[["rooms", "garage", "price"]].isna().any().any()
    assert set(frame["neighborhood"].dropna()) == set(samples.NEIGHBORHOODS)
    assert samples.house_prices(rows=300, missing=0.0).notna().all().all()
    assert frame[["area", "price"]].corr().iloc[0, 1] > 0.5  # bigger houses cost more


@pytest.mark.parametrize(
    ("make", "target", "labels"),
    [(samples.churn, "churned", {"no", "yes"}), (samples.reviews, "sentiment", {"negative", "positive"})],
)
def test_classification_tables_have_both_labels(make, target, labels):
    frame = make(rows=600, seed=0)
    assert set(frame[target]) == labels
    assert frame[target].value_counts(normalize=True).min() > 0.1


def test_churn_is_the_minority():
    assert 0.05 < (samples.churn(rows=3000, seed=0)["churned"] == "yes").mean() < 0.4


def test_linear_target_is_the_documented_line():
    frame = samples.linear(rows=500, seed=0)
    design = np.column_stack([frame[["x1", "x2", "x3"]].to_numpy(), np.ones(len(frame))])
    coefficients, *_ = np.linalg.lstsq(design, frame["y"].to_numpy(), rcond=None)
    np.testing.assert_allclose(coefficients, [3, -2, 0.5, 4], atol=0.05)


def test_shapes_writes_one_folder_of_pngs_per_class(tmp_path):
    folder = samples.shapes(tmp_path / "images", per_class=3, size=16, seed=0)
    assert sorted(path.name for path in folder.iterdir()) == ["circle", "cross", "square"]
    for shape in ("circle", "cross", "square"):
        files = sorted((folder / shape).iterdir())
        assert [path.name for path in files] == [f"{shape}_{index:03d}.png" for index in range(3)]
        assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in files)
    again = samples.shapes(tmp_path / "again", per_class=3, size=16, seed=0)
    assert (again / "cross" / "cross_002.png").read_bytes() == (folder / "cross" / "cross_002.png").read_bytes()
