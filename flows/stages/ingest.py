"""Stage ingest: load the configured source into data/raw (Parquet + its description, with the md5)."""

from __future__ import annotations

from flows.stages import Context
from kerasflow.config import Params
from kerasflow.records import RawDatasetInfo
from tasks.ingest import ingest_dataset


def run(params: Params, context: Context) -> RawDatasetInfo:
    layout = context.layout
    return ingest_dataset(params.ingest, params.seed, layout.raw_data, layout.raw_meta)
