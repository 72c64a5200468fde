"""Batch scoring: a file of new rows in, predictions out, streamed batch by batch.

The input (CSV, Parquet, `.npy` images or a folder of images) is read a batch at a time, scored
by the model's own pyfunc code (the raw-input conversion training used, which names the column
and row of a value it cannot read), counted for drift against the training split, and appended
to the output under a temporary name. Only a file scored to its last row is renamed into place:
a failure, or drift with `fail_on_drift`, leaves nothing at the output path.

`predict_file` is the whole job (`kerasflow predict`, the `batch-prediction` flow's task): the model from the
registry, the scoring, the drift report and its plot (drawn once), the scoring's MLflow run and the events.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kerasflow.config import Params, load_params
from kerasflow.errors import ExpectedError
from kerasflow.model_interface import ModelInputError, ModelInputs
from kerasflow.records import DriftReport, PredictionResult, summary_line
from kerasflow.runtime import import_quietly
from kerasflow.sources import IMAGE_SUFFIXES
from kerasflow.tables import iter_frames
from kerasflow.tables import writer as parquet_writer

logger = logging.getLogger(__name__)


class InputFileError(ExpectedError, ValueError):
    """The input cannot be read as rows the model takes; the message names the file and says why."""


class DriftError(ExpectedError, RuntimeError):
    """New data drifted past the thresholds and `predict.fail_on_drift` refused to write predictions."""


def default_output(input_path: Path) -> Path:
    """`houses.csv` → `houses.predictions.csv`; a Parquet input gives Parquet; images give CSV."""
    suffix = input_path.suffix.lower() if input_path.suffix.lower() in (".csv", ".parquet") else ".csv"
    return input_path.with_name(f"{input_path.stem}.predictions{suffix}")


def read_batches(path: Path, batch_rows: int, inputs: ModelInputs) -> Iterator[tuple[int, Any]]:
    """(first row number, batch) pairs: DataFrames of raw columns, or image arrays for an image model."""
    if not path.exists():
        raise InputFileError(f"{path}: not found")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            yield from _image_folder(path, batch_rows, inputs)
        elif suffix == ".npy":
            images = np.load(path, mmap_mode="r", allow_pickle=False)
            for start in range(0, len(images), batch_rows):
                yield start, np.asarray(images[start : start + batch_rows])
        elif suffix == ".parquet":
            yield from iter_frames(path, batch_rows)
        elif suffix in (".csv", ".txt"):
            start = 0
            for frame in pd.read_csv(path, chunksize=batch_rows):
                frame.index = pd.RangeIndex(start, start + len(frame))
                yield start, frame
                start += len(frame)
        else:
            raise InputFileError(f"{path}: unsupported file type {suffix!r}; expected .csv, .parquet, .npy or a folder")
    except InputFileError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pa.ArrowException) as error:
        if type(error).__name__ == "ModelInputError":
            raise
        raise InputFileError(f"{path}: could not be read as {suffix.lstrip('.') or 'a folder'}: {error}") from error


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder`, sorted by path: the rows of an image folder, in their order."""
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputFileError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def _image_folder(folder: Path, batch_rows: int, inputs: ModelInputs) -> Iterator[tuple[int, np.ndarray]]:
    """Every image under `folder` (sorted by path), decoded and resized to the model's input shape by tf.data, in
    parallel; a file that cannot be decoded is named."""
    import tensorflow as tf

    from tasks.images import decode_files

    files = image_files(folder)
    for start in range(0, len(files), batch_rows):
        chunk = [str(file) for file in files[start : start + batch_rows]]
        try:
            yield start, np.concatenate(list(decode_files(chunk, inputs.shape, batch=len(chunk))))
        except tf.errors.InvalidArgumentError:
            raise InputFileError(broken_image(chunk, inputs.shape[-1])) from None


def broken_image(paths: list[str], channels: int) -> str:
    """Which of `paths` TensorFlow cannot decode, and why (found one by one, once a batch of them failed)."""
    from tasks.ingest import DataSourceError, check_image

    for path in paths:
        try:
            check_image(Path(path), channels)
        except DataSourceError as error:
            return str(error)
    return f"one of {paths[0]} ... {paths[-1]} could not be decoded"


def identity(source: Path, start: int, batch: Any, keep_columns: list[str], files: list[Path] | None) -> pd.DataFrame:
    """What joins each prediction back to its record: an image's path, or the row number in the file and the
    columns `predict.keep_columns` names (an id, a timestamp)."""
    if files is not None:
        return pd.DataFrame({"path": [str(path) for path in files[start : start + len(batch)]]})
    frame = pd.DataFrame({"row": np.arange(start, start + len(batch))})
    if keep_columns:
        missing = [name for name in keep_columns if not isinstance(batch, pd.DataFrame) or name not in batch.columns]
        if missing:
            raise InputFileError(f"{source}: predict.keep_columns names {missing}, which the file does not have")
        for name in keep_columns:
            frame[kept_name(name)] = batch[name].to_numpy()
    return frame


def kept_name(column: str) -> str:
    """A kept input column's name in the output: `input_<name>` when the output has a column of that name itself
    (row, path, prediction, label, probability_<class>), so neither replaces the other."""
    reserved = str(column) in ("row", "path", "prediction", "label") or str(column).startswith("probability_")
    return f"input_{column}" if reserved else column


class OutputWriter:
    """Predictions appended to a temporary file beside `path` (CSV or Parquet by its suffix); `commit` renames it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix.lower() not in (".csv", ".parquet"):
            raise InputFileError(f"{path}: the output must be a .csv or .parquet file")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        self.temporary = Path(name)
        self.parquet = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.path.suffix.lower() == ".csv":
            frame.to_csv(self.temporary, mode="a", header=self.rows == 0, index=False)
        else:
            import pyarrow as pa

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = parquet_writer(self.temporary, table.schema)
            self.parquet.write_table(table)
        self.rows += len(frame)

    def commit(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.temporary.unlink(missing_ok=True)


def read_ahead(batches: Iterator[Any], convert: Any = None) -> Iterator[Any]:
    """`batches`, each passed through `convert`, with the next one read and converted in a thread while the current
    one is scored (reading Parquet and CSV, and much of the conversion, release the GIL). At most two batches
    are in memory."""
    from concurrent.futures import ThreadPoolExecutor

    done = object()

    def following() -> Any:
        item = next(batches, done)
        return item if item is done or convert is None else convert(item)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasflow-read") as reader:
        upcoming = reader.submit(following)
        while (item := upcoming.result()) is not done:
            upcoming = reader.submit(following)
            yield item


def predict_batch(scorer: Any, batch: Any) -> pd.DataFrame:
    """The model's predictions for one batch; raw input it cannot read is a ModelInputError naming column and row."""
    from kerasflow.tracking import rejected_input

    try:
        return scorer.predict(None, batch)
    except Exception as error:
        message = rejected_input(error)
        if message is None:
            raise
        raise ModelInputError(message) from None


def score_file(
    input_path: Path,
    output_path: Path,
    scorer: Any,
    identity_columns: dict[str, str],
    batch_rows: int,
    drift: Any = None,
    keep_columns: list[str] | None = None,
) -> OutputWriter:
    """Score `input_path` batch by batch with `scorer` (the model's pyfunc implementation) into a temporary
    file beside `output_path`; return its writer, for the caller to `commit` (or `abort`).

    Three steps overlap: the next batch is read and turned into model inputs (by the model's own copy of the
    raw-input function) in a thread, the current one is scored, and the one before is written and counted for
    drift in another; a batch's rows keep their number in the file, so an error names the row.
    Each prediction row starts with what joins it back to its record (the row number and `keep_columns`, or
    the image's path) and ends with `identity_columns` (the model's name and version); `drift` (a
    DriftCounter) counts each batch.
    """
    writer = OutputWriter(output_path)
    files = image_files(input_path) if input_path.is_dir() else None
    interface = getattr(scorer, "interface", None)
    split = interface is not None and hasattr(scorer, "outputs")

    def convert(item: tuple[int, Any]) -> tuple[int, Any, Any]:
        first, batch = item
        if not len(batch) or not split:
            return first, batch, None
        return first, batch, to_inputs(interface, batch, scorer.config.inputs)

    def finish(first: int, batch: Any, outputs: Any) -> None:
        """A scored batch into the output (and the drift counts), in a thread while the next one is scored."""
        if split:
            predictions = interface.prediction_frame(outputs, scorer.config)
        else:  # a model logged before its wrapper had `outputs`
            predictions = predict_batch(scorer, batch)
        predictions = pd.concat([identity(input_path, first, batch, keep_columns or [], files), predictions], axis=1)
        for name, value in identity_columns.items():
            # One value on every row: categorical, so Parquet stores it once per batch.
            predictions[name] = pd.Categorical.from_codes(np.zeros(len(predictions), dtype=np.int8), [value])
        writer.write(predictions)
        if drift is not None:
            drift.add(batch)

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasflow-write") as behind:
            pending = None
            for first, batch, features in read_ahead(
                read_batches(input_path, batch_rows, scorer.config.inputs), convert
            ):
                if not len(batch):
                    continue  # a header-only CSV's one empty chunk
                outputs = scorer.outputs(features) if split else None
                if pending is not None:
                    pending.result()  # one batch in writing at a time (and its error, if any, raised here)
                pending = behind.submit(finish, first, batch, outputs)
            if pending is not None:
                pending.result()
        if writer.rows == 0:
            raise InputFileError(f"{input_path}: no rows to score (the file is empty, or only a header)")
    except BaseException:
        writer.abort()
        raise
    return writer


def to_inputs(interface: Any, batch: Any, inputs: Any) -> Any:
    """The model's inputs from a raw batch, by the model's own interface; its bad-input error as kerasflow's."""
    try:
        return interface.to_model_inputs(batch, inputs)
    except interface.ModelInputError as error:
        raise ModelInputError(str(error)) from None


def resolve_model(params: Params, model_uri: str | None) -> str:
    return model_uri or params.predict.model or f"models:/{params.register_.model_name}@champion"


def predict_file(
    input_path: str | Path,
    output_path: str | Path | None = None,
    model_uri: str | None = None,
    params_path: str | Path = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> PredictionResult:
    """Score `input_path` with the model (default: the champion) into `output_path`; check drift; record it.

    Raises InputFileError (the file cannot be read, a column is missing, a value is not a number:
    named), DriftError (drift with `predict.fail_on_drift`), or the MLflow error for a model that is
    not there (tracking.ModelNotFound). Nothing is written at `output_path` unless every row was scored.
    """
    from kerasflow import tracking
    from tasks.drift import DriftCounter, TrainingStatistics

    params = load_params(params_path, overrides)
    project_root = Path(params_path).resolve().parent
    source = Path(input_path)
    output = Path(output_path) if output_path else default_output(source)
    if output.resolve() == source.resolve():
        raise InputFileError(f"{output}: --output is the input file; predictions would overwrite it (choose another)")
    tracking.configure(params.tracking, project_root)
    uri = resolve_model(params, model_uri)
    name, version, _ = tracking.registered_identity(uri) if uri.startswith("models:/") else (uri, "", None)
    import_quietly("keras")  # TensorFlow's native start-up lines left out of the terminal
    model = tracking.load_model(uri)
    scorer = model.unwrap_python_model()
    # Versions logged before models carried their training statistics have none: no drift check for them.
    statistics = scorer.training_statistics() if hasattr(scorer, "training_statistics") else None
    counter = DriftCounter(TrainingStatistics.from_dict(statistics), scorer.config.inputs) if statistics else None
    started = time.perf_counter()
    writer = score_file(
        source,
        output,
        scorer,
        {"model_name": name, "model_version": version},
        params.predict.batch_rows,
        counter,
        params.predict.keep_columns,
    )
    seconds = time.perf_counter() - started
    thresholds = params.predict.drift
    drift = counter.report(thresholds.psi, thresholds.unseen_share, thresholds.missing_change) if counter else None
    refused = bool(drift and drift.drifted) and params.predict.fail_on_drift
    if refused:
        writer.abort()
    else:
        writer.commit()
    report_path = output.with_name(f"{output.stem}.drift.json")
    run_id = record(params, project_root, uri, name, version, source, output, writer.rows, seconds, drift, report_path)
    summary = summary_line(drift)
    logger.info("scored %d rows with %s version %s in %.1f s; %s", writer.rows, name, version, seconds, summary)
    if version:  # a registered model: tell Prefect (automations may retrain on drift)
        announce(name, version, drift, source, writer.rows, run_id, report_path)
    if refused:
        raise DriftError(f"{source}: {summary}; predict.fail_on_drift is true, so no predictions were written")
    return PredictionResult(output, writer.rows, seconds, uri, name, version, drift, report_path, run_id)


def announce(
    name: str, version: str, drift: DriftReport | None, source: Path, rows: int, run_id: str | None, report_path: Path
) -> None:
    """`kerasflow.prediction.completed`, and `kerasflow.drift.detected` when a column drifted (no-ops without a
    Prefect API)."""
    from kerasflow import events

    drifted = bool(drift and drift.drifted)
    if drifted:
        payload = events.drift_payload(drift, str(source.resolve()), run_id, str(report_path.resolve()))
        labels = {events.PREDICTION_RUN_LABEL: run_id} if run_id else {}
        events.emit(events.DRIFT_DETECTED, name, version, payload, labels)
    events.emit(
        events.PREDICTION_COMPLETED,
        name,
        version,
        {"rows": rows, "drift_found": drifted, "scored_file": str(source.resolve()), "prediction_run_id": run_id},
    )


def record(
    params: Params,
    project_root: Path,
    uri: str,
    name: str,
    version: str,
    source: Path,
    output: Path,
    rows: int,
    seconds: float,
    drift: DriftReport | None,
    report_path: Path,
) -> str:
    """The drift report and its plot beside the output (drawn once, logged as they are), and a run in
    `<experiment>-predictions`: model, rows, time, drift."""
    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from kerasflow.io import write_json
    from tasks.drift import plot_drift

    plot_path = report_path.with_suffix(".png")
    if drift:
        write_json(report_path, drift.to_dict())
        plot_drift(drift, plot_path, title=f"{source.name} against {name} v{version}'s training split")
    experiment = TrackingParams(experiment=f"{params.tracking.experiment}-predictions")
    experiment_id = tracking.configure(
        experiment.model_copy(update={"tracking_uri": params.tracking.tracking_uri}), project_root
    )
    run_name = f"predict-{name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracking.open_run(experiment_id, run_name=run_name) as run_id:
        tracking.set_tags(
            run_id,
            {
                **tracking.source_tags(),
                "registry.model": name,
                "registry.version": version,
                "predict.drift": summary_line(drift),
                "mlflow.note.content": f"Scored `{source}` ({rows:,} rows) with `{uri}` (version {version}) into "
                f"`{output}`.\n\n{summary_line(drift)}\n",
            },
        )
        tracking.log_params(run_id, {"model_uri": uri, "input": str(source), "output": str(output)})
        metrics = {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds if seconds else 0.0}
        metrics["drifted_columns"] = len(drift.drifted) if drift else 0
        for column, entry in (drift.columns if drift else {}).items():
            # Column names may hold characters MLflow refuses in a metric name (spaces are fine, `(` or `é` not).
            if entry.psi is not None:
                metrics[tracking.metric_key(f"psi/{column}")] = entry.psi
            if entry.unseen_share is not None:
                metrics[tracking.metric_key(f"unseen_share/{column}")] = entry.unseen_share
        tracking.log_metrics(run_id, metrics)
        if drift:
            tracking.log_files(run_id, report_path, plot_path, folder="drift")
    return run_id
