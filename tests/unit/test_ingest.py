"""Ingest reads every kind of source and writes the raw dataset with its content hash."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from kerasflow.config import IngestParams
from tasks import ingest
from tasks.ingest import DataSourceError, infer_task, ingest_dataset, load_dataset


@pytest.mark.parametrize(
    ("dataset", "task", "rows", "image_shape"),
    [
        ("digits", "classification", 1797, [8, 8, 1]),
        ("iris", "classification", 150, None),
        ("wine", "classification", 178, None),
        ("breast_cancer", "classification", 569, None),
        ("diabetes", "regression", 442, None),
    ],
)
def test_sklearn_sources(dataset, task, rows, image_shape):
    raw = load_dataset(IngestParams(source="sklearn", dataset=dataset), seed=0)
    assert (len(raw.frame), raw.task, raw.image_shape) == (rows, task, image_shape)
    assert raw.target == "target" and "target" not in raw.feature_columns


def test_writes_parquet_and_metadata_with_dvc_md5(tmp_path):
    data, meta_path = tmp_path / "raw" / "dataset.parquet", tmp_path / "raw" / "dataset.json"
    meta = ingest_dataset(IngestParams(dataset="iris", max_rows=50), 3, data, meta_path)
    assert meta["md5"] == hashlib.md5(data.read_bytes()).hexdigest()
    assert meta["rows"] == 50 and len(pd.read_parquet(data)) == 50
    assert [p.name for p in data.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_sources(tmp_path, tabular_frame, suffix):
    path = tmp_path / f"data{suffix}"
    tabular_frame.to_csv(path, index=False) if suffix == ".csv" else tabular_frame.to_parquet(path)
    raw = load_dataset(IngestParams(source="file", path=str(path), target="label"), seed=0)
    assert raw.task == "classification" and raw.feature_columns == ["a", "b"] and len(raw.frame) == 60


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (None, "missing.csv", "file not found"),
        (b"a,b\n1,2\n", "data.xlsx", "unsupported file type"),
        (b"\x00\x01garbage", "data.parquet", "could not be read as parquet"),
        (b"", "empty.csv", "could not be read as csv"),
    ],
)
def test_unreadable_files_are_named(tmp_path, content, name, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataSourceError, match=expected) as raised:
        load_dataset(IngestParams(source="file", path=str(path)), seed=0)
    assert name in str(raised.value)


def test_missing_target_column_is_named(tmp_path, tabular_frame):
    path = tmp_path / "data.csv"
    tabular_frame.to_csv(path, index=False)
    with pytest.raises(DataSourceError, match="target column 'price' not found"):
        load_dataset(IngestParams(source="file", path=str(path), target="price"), seed=0)


def test_keras_download_failure_is_a_clear_error(monkeypatch):
    """The real loader is kept; when the network is down the error says what to do."""
    import keras

    def offline():
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataSourceError, match=r"could not load keras.datasets.mnist .*name resolution"):
        load_dataset(IngestParams(source="keras", dataset="mnist"), seed=0)
    assert "storage.googleapis.com" in ingest.KERAS_ORIGIN


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.5, 2.25, 3.0, 4.75], "regression"),
        ([0, 1, 1, 0], "classification"),
        (["yes", "no", "yes", "no"], "classification"),
    ],
)
def test_infer_task(values, expected):
    assert infer_task(pd.DataFrame({"y": values}), "y", None) == expected
