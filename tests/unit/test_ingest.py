"""Ingest reads every kind of source and writes the raw dataset with its content hash."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kerasflow import samples
from kerasflow.config import IngestParams
from kerasflow.records import RawDatasetInfo
from kerasflow.sources import MAX_CLASSES
from tasks.ingest import DataSourceError, TargetProbe, ingest_dataset, load_dataset


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
    frame, raw = load_dataset(IngestParams(source="sklearn", dataset=dataset), seed=0)
    assert (len(frame), raw.task, raw.image_shape) == (rows, task, image_shape)
    assert raw.target == "target" and "target" not in raw.feature_columns


def test_writes_parquet_and_metadata_with_dvc_md5(tmp_path):
    data, meta_path = tmp_path / "raw" / "dataset.parquet", tmp_path / "raw" / "dataset.json"
    info = ingest_dataset(IngestParams(dataset="iris", max_rows=50), 3, data, meta_path)
    assert info.md5 == hashlib.md5(data.read_bytes()).hexdigest()
    assert info.rows == 50 and len(pd.read_parquet(data)) == 50
    assert RawDatasetInfo.from_dict(json.loads(meta_path.read_text())) == info
    assert [p.name for p in data.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_sources(tmp_path, tabular_frame, suffix):
    path = tmp_path / f"data{suffix}"
    tabular_frame.to_csv(path, index=False) if suffix == ".csv" else tabular_frame.to_parquet(path)
    frame, raw = load_dataset(IngestParams(source="file", path=str(path), target="label"), seed=0)
    assert raw.task == "classification" and raw.feature_columns == ["a", "b"] and len(frame) == 60


def test_nested_parquet_columns_are_left_out_by_name_or_refused_when_asked_for(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "size": [1.0, 2.0, 3.0, 4.0] * 10,
            "tags": pa.array([["a"], ["b", "c"], [], ["a"]] * 10),
            "meta": pa.array([{"k": 1}, {"k": 2}, {"k": 3}, {"k": 4}] * 10),
            "label": [0, 1, 0, 1] * 10,
        }
    )
    pq.write_table(table, tmp_path / "nested.parquet")
    params = IngestParams(source="file", path=str(tmp_path / "nested.parquet"), target="label")
    frame, raw = load_dataset(params, seed=0)
    assert raw.feature_columns == ["size"] and list(frame.columns) == ["size", "label"]
    asked = params.model_copy(update={"features": ["size", "tags"]})
    with pytest.raises(DataSourceError, match=r"nested.parquet: ingest.features names \['tags'\], which hold nested"):
        load_dataset(asked, seed=0)


def test_listed_missing_value_text_is_read_as_missing_and_unlisted_text_is_named(tmp_path):
    frame = pd.DataFrame({"x": [str(i * 0.5) for i in range(40)], "y": [i % 2 for i in range(40)]})
    frame.loc[31, "x"] = "nil"
    frame.to_csv(tmp_path / "cgm.csv", index=False)
    params = IngestParams(source="file", path=str(tmp_path / "cgm.csv"), target="y", missing_values=["nil"])
    read, _ = load_dataset(params, seed=0)
    assert read["x"].isna().sum() == 1 and read["x"].dtype == "float64"
    unlisted, _ = load_dataset(params.model_copy(update={"missing_values": []}), seed=0)
    assert not pd.api.types.is_numeric_dtype(unlisted["x"])  # without it the column is text: categories


def test_rows_without_a_target_are_dropped_only_when_asked(tmp_path):
    frame = pd.DataFrame({"x": np.arange(40.0), "y": [np.nan if i % 8 == 0 else i % 2 for i in range(40)]})
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    params = IngestParams(source="file", path=str(tmp_path / "gaps.csv"), target="y", drop_missing_target=True)
    kept, raw = load_dataset(params, seed=0)
    assert len(kept) == 35 and kept["y"].notna().all()
    everything, _ = load_dataset(params.model_copy(update={"drop_missing_target": False}), seed=0)
    assert len(everything) == 40 and everything["y"].isna().sum() == 5


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
    with pytest.raises(DataSourceError, match=r"could not load keras.datasets.mnist .*name resolution") as raised:
        load_dataset(IngestParams(source="keras", dataset="mnist"), seed=0)
    # The message says where the data comes from and where to put it by hand.
    assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/" in str(raised.value)
    assert raised.value.transient  # a Prefect retry may succeed once the network is back


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.5, 2.25, 3.0, 4.75], "regression"),
        ([0, 1, 1, 0], "classification"),
        (["yes", "no", "yes", "no"], "classification"),
    ],
)
def test_infer_task(values, expected):
    probe = TargetProbe()
    probe.add(pa.array(values))
    assert probe.task() == expected
    many = TargetProbe()  # more whole numbers than a classification has: a quantity
    many.add(pa.array(list(range(MAX_CLASSES + 1))))
    assert many.task() == "regression"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three classes of 8x8 PNG shapes, four images each (kerasflow.samples.shapes)."""
    return samples.shapes(tmp_path_factory.mktemp("images") / "shapes", per_class=4, size=8, seed=0)


@pytest.mark.parametrize("image_shape", [[8, 8, 3], [4, 4, 1]])
def test_image_folder_source_stays_files(image_folder, image_shape):
    """The raw dataset of an image folder is its files (path, label, md5): no pixel columns; the images are
    decoded lazily, at the model's size, wherever they are read."""
    frame, raw = load_dataset(IngestParams(source="image_folder", path=str(image_folder), image_shape=image_shape), 0)
    assert raw.task == "classification" and raw.image_shape == image_shape and raw.target == "target"
    assert list(frame.columns) == ["path", "target", "md5"] and raw.feature_columns == ["path"] and len(frame) == 12
    assert frame["target"].value_counts().to_dict() == {"circle": 4, "cross": 4, "square": 4}
    assert raw.image_root == str(image_folder.resolve())
    first = image_folder / frame["path"][0]
    assert frame["md5"][0] == hashlib.md5(first.read_bytes()).hexdigest()
    assert raw.source == {"source": "image_folder", "dataset": None, "path": str(image_folder)}
    from tasks.images import decode_files

    (values,) = decode_files([str(first)], tuple(image_shape))
    assert values.shape == (1, *image_shape) and values.dtype == np.float32
    assert 0 <= values.min() and values.max() <= 255 and values.std() > 10


def test_image_folder_problems_are_named(tmp_path, image_folder):
    with pytest.raises(DataSourceError, match="folder not found"):
        load_dataset(IngestParams(source="image_folder", path=str(tmp_path / "none"), image_shape=[8, 8]), 0)
    with pytest.raises(DataSourceError, match="2 channels; image folders give 1, 3 or 4"):
        load_dataset(IngestParams(source="image_folder", path=str(image_folder), image_shape=[8, 8, 2]), 0)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataSourceError, match=r"no images .* in class sub-folders"):
        load_dataset(IngestParams(source="image_folder", path=str(tmp_path / "empty"), image_shape=[8, 8]), 0)


def test_features_choose_the_columns(tmp_path, tabular_frame):
    path = tmp_path / "data.csv"
    tabular_frame.assign(c=1.0, note="some words").to_csv(path, index=False)
    frame, raw = load_dataset(IngestParams(source="file", path=str(path), target="label", features=["b", "note"]), 0)
    assert raw.feature_columns == ["b", "note"] and list(frame.columns) == ["b", "note", "label"]
    assert raw.text_column is None
    _, with_text = load_dataset(IngestParams(source="file", path=str(path), target="label", text_column="note"), 0)
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


# Small stand-ins for the keras.datasets downloads, written where Keras' own loaders look
# ($KERAS_HOME/datasets); the loaders, and kerasflow's conversion of what they return, run for real.
KERAS_DATASETS_PROBE = r"""
import gzip, json, os, sys
from pathlib import Path
import numpy as np
home = Path(os.environ["KERAS_HOME"]) / "datasets"
(home / "fashion-mnist").mkdir(parents=True)
rng = np.random.default_rng(0)
images = lambda n: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
digits = lambda n: rng.integers(0, 10, size=n, dtype=np.uint8)
np.savez(home / "mnist.npz", x_train=images(12), y_train=digits(12), x_test=images(4), y_test=digits(4))
for name, values, offset in (("train-labels-idx1-ubyte", digits(10), 8), ("train-images-idx3-ubyte", images(10), 16),
                             ("t10k-labels-idx1-ubyte", digits(5), 8), ("t10k-images-idx3-ubyte", images(5), 16)):
    with gzip.open(home / "fashion-mnist" / f"{name}.gz", "wb") as stream:
        stream.write(bytes(offset) + values.tobytes())
np.savez(home / "boston_housing.npz", x=rng.normal(size=(20, 13)), y=rng.uniform(5, 50, size=20))
reviews = lambda n: np.array([[int(w) for w in rng.integers(1, 50, size=int(rng.integers(3, 9)))] for _ in range(n)],
                             dtype=object)
labels = lambda n: rng.integers(0, 2, size=n)
np.savez(home / "imdb.npz", x_train=reviews(8), y_train=labels(8), x_test=reviews(4), y_test=labels(4))

import keras.src.utils.file_utils as file_utils
file_utils.validate_file = lambda *args, **kwargs: True  # the stand-ins cannot match the real files' SHA-256
from kerasflow.config import IngestParams
from tasks.ingest import load_dataset
report = {}
for name in ("mnist", "fashion_mnist", "boston_housing", "imdb"):
    frame, raw = load_dataset(IngestParams(source="keras", dataset=name), seed=0)
    report[name] = {
        "rows": len(frame), "task": raw.task, "features": len(raw.feature_columns), "image_shape": raw.image_shape,
        "text_column": raw.text_column, "target_dtype": str(frame[raw.target].dtype),
        "first": frame[raw.text_column].iloc[0] if raw.text_column else float(frame[raw.feature_columns].max().max()),
    }
print(json.dumps(report))
"""


def test_keras_datasets_convert_from_the_files_keras_loads(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", KERAS_DATASETS_PROBE], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Train and test files become one table; images are pixel columns with their shape recorded.
    assert report["mnist"] == {**report["mnist"], "rows": 16, "task": "classification", "features": 784}
    assert report["mnist"]["image_shape"] == [28, 28, 1] and report["mnist"]["first"] <= 255
    assert report["fashion_mnist"]["rows"] == 15 and report["fashion_mnist"]["image_shape"] == [28, 28, 1]
    boston = report["boston_housing"]
    assert (boston["rows"], boston["task"], boston["features"], boston["target_dtype"]) == (
        20,
        "regression",
        13,
        "float64",
    )
    imdb = report["imdb"]
    assert (imdb["rows"], imdb["task"], imdb["text_column"]) == (12, "classification", "text")
    # Reviews arrive as word ids (shifted by Keras' index_from=3, after a start token 1), written as text.
    assert imdb["first"].split()[0] == "1" and all(token.isdigit() for token in imdb["first"].split())


def test_a_csv_is_converted_block_by_block_into_row_groups(tmp_path):
    """A CSV of several read blocks becomes Parquet row groups of ingest.batch_rows, with the same rows and an md5
    that is the written file's (computed as it was written)."""
    rows = 120_000  # about 6 MB: pyarrow reads it in several blocks
    frame = pd.DataFrame({"a": np.arange(rows) * 0.5, "b": np.arange(rows) % 7, "label": np.arange(rows) % 2})
    frame.to_csv(tmp_path / "big.csv", index=False)
    data, meta = tmp_path / "raw" / "dataset.parquet", tmp_path / "raw" / "dataset.json"
    info = ingest_dataset(
        IngestParams(source="file", path=str(tmp_path / "big.csv"), target="label", batch_rows=10_000), 0, data, meta
    )
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(data).metadata
    assert metadata.num_rows == rows and metadata.row_group(0).num_rows == 10_000 and metadata.num_row_groups == 12
    assert info.md5 == hashlib.md5(data.read_bytes()).hexdigest()
    pd.testing.assert_frame_equal(pd.read_parquet(data), frame, check_dtype=False)


def test_a_bad_value_deep_in_a_csv_names_its_column_and_row_and_nothing_is_written(tmp_path):
    rows = 700_000  # about 7 MB: pyarrow takes the column types from the first 4 MB block
    frame = pd.DataFrame({"area": (np.arange(rows) * 0.25).astype(object), "label": np.arange(rows) % 2})
    frame.loc[600_000, "area"] = "huge"  # far past the block the column's type is read from
    frame.to_csv(tmp_path / "houses.csv", index=False)
    data, meta = tmp_path / "raw" / "dataset.parquet", tmp_path / "raw" / "dataset.json"
    with pytest.raises(DataSourceError) as raised:
        ingest_dataset(IngestParams(source="file", path=str(tmp_path / "houses.csv"), target="label"), 0, data, meta)
    message = str(raised.value)
    assert (
        "houses.csv" in message
        and "column 'area', row 600000 (line 600002 of the file): 'huge' is not a number" in message
    )
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_whole_numbers_then_a_decimal_deep_in_a_csv_read_as_decimals(tmp_path):
    rows = 700_000
    frame = pd.DataFrame({"price": np.arange(rows).astype(float), "label": np.arange(rows) % 2})
    frame.loc[680_000, "price"] = 12.5
    frame.to_csv(tmp_path / "prices.csv", index=False)  # "0.0, 1.0, ..." is written as decimals anyway
    text = (tmp_path / "prices.csv").read_text().replace(".0,", ",")  # whole numbers written as integers
    (tmp_path / "prices.csv").write_text(text)
    data, meta = tmp_path / "raw" / "dataset.parquet", tmp_path / "raw" / "dataset.json"
    ingest_dataset(IngestParams(source="file", path=str(tmp_path / "prices.csv"), target="label"), 0, data, meta)
    back = pd.read_parquet(data)
    assert back["price"].dtype == np.float64 and back["price"][680_000] == 12.5 and back["price"][5] == 5


def test_a_corrupt_image_is_named_at_ingest(tmp_path):
    folder = samples.shapes(tmp_path / "shapes", per_class=3, size=8, seed=0)
    broken = folder / "square" / "square_002.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataSourceError, match=r"square_002.png: not an image TensorFlow can decode"):
        ingest_dataset(
            IngestParams(source="image_folder", path=str(folder), image_shape=[8, 8, 3]),
            0,
            tmp_path / "raw" / "dataset.parquet",
            tmp_path / "raw" / "dataset.json",
        )
    assert not (tmp_path / "raw" / "dataset.parquet").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"area,area,price\n1,2,3\n4,5,6\n", r"houses.csv: column name\(s\) \['area'\] appear more than once"),
        (b"area,rooms,price\n", r"houses.csv: no rows under the header"),
        (
            b"area;rooms;price\n1;2;3\n4;5;6\n",
            r"houses.csv: target column 'price' not found .*set ingest.delimiter: ';'",
        ),
    ],
)
def test_first_use_mistakes_in_a_csv_are_named_by_the_users_file(tmp_path, content, expected):
    """Duplicate columns were silently renamed (area, area.1) and trained on; a header-only file and a semicolon-
    separated one were reported against the internal dataset.parquet and 'target', with no hint."""
    (tmp_path / "houses.csv").write_bytes(content)
    with pytest.raises(DataSourceError, match=expected):
        ingest_dataset(
            IngestParams(source="file", path=str(tmp_path / "houses.csv"), target="price"),
            0,
            tmp_path / "raw" / "dataset.parquet",
            tmp_path / "raw" / "dataset.json",
        )
    assert not (tmp_path / "raw" / "dataset.parquet").exists()
