"""Stage validate: check the raw data against the recorded schema (inferred and recorded on the first run).

The schema knows the source it was recorded for. Data from another source (another file, another
dataset) gets a schema of its own, said in one line; the same source with other columns or ranges
is refused, naming them, the user's file, and `kerasflow accept-schema`, the one command that accepts
the change.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from flows.stages import Context
from kerasflow.config import Params
from kerasflow.errors import ConfigError
from kerasflow.io import read_json, write_json
from kerasflow.layout import Layout
from kerasflow.records import DatasetSchema, RawDatasetInfo, ValidationReport
from kerasflow.tables import iter_frames, row_group_rows
from tasks.validate import DataValidationError, validate_dataset

logger = logging.getLogger(__name__)

ACCEPT = "kerasflow accept-schema"


def run(params: Params, context: Context) -> ValidationReport:
    layout = context.layout
    info = RawDatasetInfo.from_dict(read_json(layout.raw_meta))
    check_slices(params, info)
    recorded = DatasetSchema.from_dict(read_json(layout.schema)) if layout.schema.is_file() else None
    replaced = None
    if recorded is not None and recorded.source != info.source_label:
        replaced = recorded.source or "data of unknown source"
        logger.info(
            "%s was recorded for %s; this data is %s: recording a schema for it",
            layout.schema,
            replaced,
            info.source_label,
        )
        recorded = None
    try:
        schema, report = validate_dataset(batches(layout), info, recorded, params.validate_)
    except DataValidationError as error:
        # The report says what went wrong; preprocess refuses to run on a failed report.
        write_json(layout.validation_report, ValidationReport(False, info.md5, error.problems).to_dict())
        if recorded is not None:
            raise DataValidationError(
                error.problems,
                source=where(info),
                hint=f"{layout.schema} was recorded for this source; if the change is intended, run `{ACCEPT}`",
            ) from None
        raise DataValidationError(error.problems, source=where(info)) from None
    if recorded is None:
        write_json(layout.schema, replace(schema, source=info.source_label).to_dict())
        logger.info("recorded the dataset schema in %s", layout.schema)
    if replaced:
        report = replace(report, schema="new source", replaced_schema_of=replaced)
    write_json(layout.validation_report, report.to_dict())
    logger.info(
        "%d rows x %d columns passed validation against the %s schema", report.rows, report.columns, report.schema
    )
    return report


def check_slices(params: Params, info: RawDatasetInfo) -> None:
    """evaluate.slices must name feature columns of this data (found before any training, not after)."""
    unknown = [column for column in params.evaluate.slices if column not in info.feature_columns]
    if unknown:
        shown = ", ".join(info.feature_columns[:20]) + (" …" if len(info.feature_columns) > 20 else "")
        raise ConfigError(
            f"evaluate.slices names {unknown}, not feature columns of {where(info)}; its feature columns: {shown}"
        )


def where(info: RawDatasetInfo) -> str:
    """The user's file or folder, or the built-in dataset: how messages name the data."""
    return info.source.get("path") or info.source_label or info.file


def batches(layout: Layout) -> Any:
    return (frame for _, frame in iter_frames(layout.raw_data, row_group_rows(layout.raw_data)))


def accept(params: Params, layout: Layout) -> DatasetSchema:
    """Record the schema of the raw data as it is now (the change validate refused becomes the recorded schema)."""
    if not layout.raw_meta.is_file():
        raise FileNotFoundError(f"{layout.raw_meta}: not found; run the ingest stage first (`dvc repro ingest`)")
    info = RawDatasetInfo.from_dict(read_json(layout.raw_meta))
    inferred, _ = validate_dataset(batches(layout), info, None, params.validate_)
    schema = replace(inferred, source=info.source_label)
    write_json(layout.schema, schema.to_dict())
    logger.info("recorded the schema of %s in %s", info.source_label, layout.schema)
    return schema
