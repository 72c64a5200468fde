"""Stage preprocess: split the validated raw data into train / validation / test, fitting the input layers'
constants on the training rows in the same streaming pass."""

from __future__ import annotations

import logging

from flows.stages import Context
from kerasflow.config import Params
from kerasflow.io import read_json
from kerasflow.records import PreprocessState, RawDatasetInfo, ValidationReport
from tasks.preprocess import describe_split, preprocess_dataset

logger = logging.getLogger(__name__)


def run(params: Params, context: Context) -> PreprocessState:
    layout = context.layout
    report = ValidationReport.from_dict(read_json(layout.validation_report))
    info = RawDatasetInfo.from_dict(read_json(layout.raw_meta))
    if not report.passed_for(info.md5):
        raise RuntimeError(f"{layout.validation_report}: the raw dataset has not passed validation; run validate first")
    state = preprocess_dataset(layout.raw_data, info, params.preprocess, params.seed, layout.processed_dir)
    kinds = {
        kind: sum(entry.kind == kind for entry in state.inputs.columns) for kind in ("numeric", "categorical", "text")
    }
    logger.info(
        "split %s rows (seed %d): %s; inputs: %s",
        sum(state.rows.values()),
        params.seed,
        describe_split(state),
        f"images {list(state.inputs.shape)}" if state.inputs.kind == "image" else kinds,
    )
    for name, note in state.notes.items():
        logger.log(logging.WARNING if name == "constant_columns" else logging.INFO, "%s", note)
    return state
