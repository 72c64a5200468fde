"""Stage validate: check the raw data against the recorded schema (inferred and recorded on the first run)."""

from __future__ import annotations

import logging
from typing import Any

from flows.stages import Context
from kerasflow.config import Params
from kerasflow.io import read_json, write_json
from kerasflow.records import RawDatasetInfo
from kerasflow.tables import iter_frames, row_group_rows
from tasks.validate import DataValidationError, validate_dataset

logger = logging.getLogger(__name__)


def run(params: Params, context: Context) -> dict[str, Any]:
    layout = context.layout
    info = RawDatasetInfo.from_dict(read_json(layout.raw_meta))
    recorded = read_json(layout.schema) if layout.schema.is_file() else None
    batches = (frame for _, frame in iter_frames(layout.raw_data, row_group_rows(layout.raw_data)))
    try:
        schema, report = validate_dataset(batches, info, recorded, params.validate_)
    except DataValidationError as error:
        # The report says what went wrong; preprocess refuses to run on a failed report.
        write_json(layout.validation_report, {"ok": False, "problems": error.problems, "md5": info.md5})
        raise
    if recorded is None:
        write_json(layout.schema, schema)
        logger.info("recorded the dataset schema in %s", layout.schema)
    write_json(layout.validation_report, report)
    logger.info(
        "%d rows x %d columns passed validation against the %s schema",
        report["rows"],
        report["columns"],
        report["schema"],
    )
    return report
