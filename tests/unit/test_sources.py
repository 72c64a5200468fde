"""A data source is one registry entry: a toy source added as one entry is read, checked, hashed and logged."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from kerasflow import sources
from kerasflow.config import ConfigError, IngestParams, parse_params
from kerasflow.sources import DataSource, source_of
from tasks.ingest import SourceData, load_dataset


def open_toy(params: IngestParams) -> SourceData:
    """Tab-separated `key=value` pairs, one row a line: a format no other source reads."""
    with open(params.path) as lines:
        rows = [dict(pair.split("=") for pair in line.strip().split("\t")) for line in lines if line.strip()]
    table = pa.Table.from_pandas(pd.DataFrame(rows).astype(float), preserve_index=False)
    return SourceData(lambda: iter(table.to_batches()), target=params.target, schema=table.schema, rows=len(table))


@pytest.fixture
def toy_source(monkeypatch):
    entry = DataSource("toy", f"{__name__}:open_toy", names_path=True, path_is="a file of key=value lines")
    monkeypatch.setitem(sources.SOURCES, "toy", entry)
    return entry


def test_a_source_added_as_one_entry_is_read_checked_and_logged(toy_source, tmp_path):
    path = tmp_path / "rows.kv"
    path.write_text("".join(f"x={index}\ty={index % 2}\n" for index in range(40)))
    params = IngestParams(source="toy", path=str(path), target="y")
    frame, info = load_dataset(params, seed=0)
    assert len(frame) == 40 and info.feature_columns == ["x"] and info.task == "classification"
    assert info.source == {"source": "toy", "dataset": None, "path": str(path)}
    # The rest of kerasflow asks the entry: the file to hash and depend on, the tag's label, the params that apply.
    assert source_of(params).path(params) == path and source_of(params).label(params) == "rows.kv"
    assert "ingest.dataset" in toy_source.unused_params and "ingest.path" not in toy_source.unused_params
    with pytest.raises(ConfigError, match=r"path is required for source 'toy' \(a file of key=value lines\)"):
        parse_params({"ingest": {"source": "toy"}}, "params.yaml")


def test_an_unknown_source_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"ingest.source: must be one of \['sklearn', 'keras', 'file'"):
        parse_params({"ingest": {"source": "toy"}}, "params.yaml")
