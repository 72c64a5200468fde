"""Ingest reads every kind of source and writes the raw dataset with its content hash."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from kerasflow import samples
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


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three classes of 8x8 PNG shapes, four images each (kerasflow.samples.shapes)."""
    return samples.shapes(tmp_path_factory.mktemp("images") / "shapes", per_class=4, size=8, seed=0)


@pytest.mark.parametrize(("image_shape", "pixels"), [([8, 8, 3], 8 * 8 * 3), ([4, 4, 1], 4 * 4)])
def test_image_folder_source(image_folder, image_shape, pixels):
    raw = load_dataset(IngestParams(source="image_folder", path=str(image_folder), image_shape=image_shape), 0)
    assert raw.task == "classification" and raw.image_shape == image_shape and raw.target == "target"
    assert len(raw.feature_columns) == pixels and len(raw.frame) == 12
    assert raw.frame["target"].value_counts().to_dict() == {"circle": 4, "cross": 4, "square": 4}
    values = raw.frame[raw.feature_columns].to_numpy()
    assert values.dtype == np.float32 and 0 <= values.min() and values.max() <= 255 and values.std() > 10
    assert raw.source == {"source": "image_folder", "dataset": None, "path": str(image_folder)}


def test_image_folder_problems_are_named(tmp_path, image_folder):
    with pytest.raises(DataSourceError, match="folder not found"):
        load_dataset(IngestParams(source="image_folder", path=str(tmp_path / "none"), image_shape=[8, 8]), 0)
    with pytest.raises(DataSourceError, match="2 channels; image folders give 1, 3 or 4"):
        load_dataset(IngestParams(source="image_folder", path=str(image_folder), image_shape=[8, 8, 2]), 0)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="empty"):
        load_dataset(IngestParams(source="image_folder", path=str(tmp_path / "empty"), image_shape=[8, 8]), 0)


def test_features_choose_the_columns(tmp_path, tabular_frame):
    path = tmp_path / "data.csv"
    tabular_frame.assign(c=1.0, note="some words").to_csv(path, index=False)
    raw = load_dataset(IngestParams(source="file", path=str(path), target="label", features=["b", "note"]), 0)
    assert raw.feature_columns == ["b", "note"] and list(raw.frame.columns) == ["b", "note", "label"]
    assert raw.text_column is None
    with_text = load_dataset(IngestParams(source="file", path=str(path), target="label", text_column="note"), 0)
    assert with_text.text_column == "note" and with_text.feature_columns == ["a", "b", "c", "note"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"features": ["a", "zzz"]}, r"ingest.features names \['zzz'\], which are not feature columns"),
        ({"features": ["a", "label"]}, r"ingest.features names \['label'\]"),
        ({"text_column": "words"}, "ingest.text_column 'words' is not a feature column"),
        ({"features": ["a"], "text_column": "b"}, "ingest.text_column 'b' is not a feature column"),
    ],
)
def test_unknown_feature_and_text_columns_are_named(tmp_path, tabular_frame, extra, expected):
    path = tmp_path / "data.csv"
    tabular_frame.to_csv(path, index=False)
    with pytest.raises(DataSourceError, match=expected):
        load_dataset(IngestParams(source="file", path=str(path), target="label", **extra), 0)
