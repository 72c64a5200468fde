"""Preprocess: a seeded (stratified) train / validation / test split of the raw rows, streamed, and in the same
pass the constants the model's input layers need, fitted on the training rows.

Each row goes to a split by the seeded hash of its position in the raw file (`tasks.sampling`): the
first `test_fraction` of each class's rows in hash order are test, the next `val_fraction` validation,
the rest training, exactly as if the whole file had been sorted, but found with two cheap passes over
the target column and bounded memory, so the split never depends on how the file is batched. The
main pass reads the raw file a row group at a time, appends each row to its split's Parquet file
(row groups of `preprocess.row_group_rows`), and feeds the training rows to the input fitter (numeric
moments, vocabularies, text tokens, image scaling, target scaling, class counts) and to the drift
statistics. The features stay raw: the model's first layers impute, normalize, look up and vectorize,
with the fitted constants, so the trained model takes raw input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kerasflow.config import PreprocessParams
from kerasflow.errors import ExpectedError
from kerasflow.io import atomic_dir, read_json, write_json
from kerasflow.model_interface import ModelInputs, to_model_inputs
from kerasflow.records import PreprocessState, RawDatasetInfo
from kerasflow.tables import ParquetStream, decoded_bytes, iter_batches, iter_frames, open_parquet, row_count
from tasks.drift import IMAGE_COLUMN, TrainingStatistics, drift_columns, image_means, statistics_from
from tasks.features import InputFitter, column_kinds, describe_inputs, feature_matrix
from tasks.sampling import SmallestRows, class_thresholds, hash_positions, position_hashes, row_hash
from tasks.summaries import TableSummary

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# The encoded label in a split file: the class index, or the regression target as float32.
LABEL = "__label__"
# Salt of the drift sample's hash (independent of the split).
SAMPLE_SALT = 2
# Images decoded at a time when fitting on an image folder's training rows; decoded pixels a batch of a split
# of image files holds at most.
IMAGE_CHUNK = 64
BATCH_BYTES = 64 * 2**20

__all__ = ["LABEL", "SPLITS", "ParquetSplit", "Split", "pooled", "preprocess_dataset", "read_state", "row_hash"]


@dataclass(frozen=True)
class Split:
    """Raw features (an image array or a DataFrame of columns) and labels of one split, in memory."""

    x: np.ndarray | pd.DataFrame
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def labels(self) -> np.ndarray:
        return self.y


def pooled(*splits: Split | ParquetSplit) -> Split:
    """The splits' rows together, in memory, in order (train.cross_fit's training and validation rows)."""
    parts = [split if isinstance(split, Split) else split.load() for split in splits]
    xs = [part.x for part in parts]
    x = pd.concat(xs, ignore_index=True) if isinstance(xs[0], pd.DataFrame) else np.concatenate(xs)
    return Split(x, np.concatenate([part.y for part in parts]))


@dataclass(frozen=True)
class ParquetSplit:
    """One split file: its raw feature columns (or image paths) and labels, read a batch at a time."""

    path: Path
    inputs: ModelInputs
    image_root: str | None = None

    def __len__(self) -> int:
        return row_count(self.path)

    @property
    def files(self) -> bool:
        """Whether its images are files to decode (an image folder), not pixel columns."""
        return self.image_root is not None

    def frames(self, batch_rows: int) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """(raw features, labels) batch by batch: a DataFrame of the columns, or of an image folder's paths."""
        for _, frame in iter_frames(self.path, batch_rows):
            yield frame.drop(columns=LABEL), frame[LABEL].to_numpy()

    def batches(self, batch_rows: int) -> Iterator[tuple[Any, np.ndarray]]:
        """(raw features as the model takes them, labels) batch by batch: images decoded, columns as they are. An
        image folder's batches hold at most BATCH_BYTES of decoded pixels."""
        if self.files:
            batch_rows = max(1, min(batch_rows, BATCH_BYTES // (int(np.prod(self.inputs.shape)) * 4)))
        for x, y in self.frames(batch_rows):
            yield self.features(x), y

    def features(self, frame: pd.DataFrame) -> Any:
        """Raw features of a batch: images as arrays (decoded from their files), or the feature columns."""
        if self.files:
            from tasks.images import absolute, decode_files

            return np.concatenate(
                list(decode_files(list(absolute(self.image_root, frame["path"])), self.inputs.shape, len(frame)))
            )
        if self.inputs.kind == "image":
            return np.asarray(to_model_inputs(frame, self.inputs))
        return frame.reset_index(drop=True)

    def labels(self) -> np.ndarray:
        """Every row's label (one column: small beside the features)."""
        return open_parquet(self.path).read(columns=[LABEL]).column(0).to_numpy()

    def decoded_bytes(self) -> int:
        """What the split takes in memory, decoded (an image folder's images at the model's size, as float32)."""
        if self.files:
            return len(self) * int(np.prod(self.inputs.shape)) * 4
        return decoded_bytes(self.path)

    def load(self) -> Split:
        """The whole split in memory."""
        parts = list(self.batches(1 << 16))
        if not parts:
            return Split(self.features(pd.read_parquet(self.path).drop(columns=LABEL)), np.empty(0))
        return pooled(*(Split(x, y) for x, y in parts))


def split_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}.parquet"


def split_source(directory: Path, name: str, state: PreprocessState | None = None) -> ParquetSplit:
    """A split of the processed folder, to stream."""
    path = split_path(directory, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the preprocess stage first")
    state = state or read_state(directory)
    return ParquetSplit(path, state.inputs, state.image_root)


def read_split(directory: Path, name: str) -> Split:
    """A split of the processed folder, in memory (small data, tests)."""
    return split_source(directory, name).load()


def read_state(directory: Path) -> PreprocessState:
    return PreprocessState.from_dict(read_json(Path(directory) / "state.json"))


def read_statistics(directory: Path) -> TrainingStatistics:
    return TrainingStatistics.from_dict(read_json(Path(directory) / "statistics.json"))


# The split -------------------------------------------------------------------------------------------------


class SplitError(ExpectedError, ValueError):
    """Too few rows (of a class) for a train / validation / test split: the message names the class and the data."""


def ordered_classes(values: set[Any]) -> list[Any]:
    """Class labels in a fixed order: by type name, then value (so 2 sorts before 10, "a" before "b")."""
    labels = [value.item() if hasattr(value, "item") else value for value in values]
    return sorted(labels, key=lambda value: (str(type(value)), value))


@dataclass(frozen=True)
class SplitPlan:
    """Where each row goes: per class, the hash bound of its test rows and of its test and validation rows."""

    seed: int
    test_bound: np.ndarray  # uint64 per class code
    val_bound: np.ndarray

    def assign(self, positions: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Each row's split (SPLIT_CODES) from its position in the raw file and its class code."""
        hashes = hash_positions(positions, self.seed)
        assignment = np.full(len(positions), SPLIT_CODES["train"], dtype=np.int8)
        assignment[hashes <= self.val_bound[codes]] = SPLIT_CODES["val"]
        assignment[hashes <= self.test_bound[codes]] = SPLIT_CODES["test"]
        return assignment


def plan_split(
    labels: Callable[[], Iterator[np.ndarray]],
    counts: np.ndarray,
    params: PreprocessParams,
    seed: int,
    stratified: bool,
    classes: list[Any] | None = None,
    where: str = "",
) -> SplitPlan:
    """The split's hash bounds: the first `test_fraction` of each class's rows in hash order are test, the next
    `val_fraction` validation (at least one row each), the rest training. `labels()` yields the class codes of
    every row in file order (all zeros when not stratified); it is read twice. Too few rows of a class (named by
    its label in `classes`, in the data `where`) is a SplitError."""
    ranks = {}
    for code, rows in enumerate(counts):
        test_rows = max(1, round(rows * params.test_fraction))
        val_rows = max(1, round(rows * params.val_fraction))
        if rows - test_rows - val_rows < 1:
            label = f" of class {(classes[code] if classes else code)!r}" if stratified else ""
            raise SplitError(
                f"{where + ': ' if where else ''}{rows} rows{label} are too few to split into train / val / test with "
                f"test_fraction {params.test_fraction} and val_fraction {params.val_fraction} (each split needs at "
                "least 1 row; a class needs 3 or more rows: add rows, or leave that class's rows out)"
            )
        ranks[code] = [test_rows, test_rows + val_rows]

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for codes in labels():
            yield codes, hash_positions(np.arange(start, start + len(codes)), seed)
            start += len(codes)

    bounds = class_thresholds(batches, ranks, len(counts))
    test = np.array([bounds[code][0] for code in range(len(counts))], dtype=np.uint64)
    val = np.array([bounds[code][1] for code in range(len(counts))], dtype=np.uint64)
    return SplitPlan(seed, test, val)


def assign_splits(y: np.ndarray, params: PreprocessParams, seed: int, classification: bool) -> np.ndarray:
    """Which split each row of labels held in memory goes to (SPLIT_CODES): the streaming rule on one batch."""
    stratified = classification and params.stratify
    classes = np.unique(y) if stratified else np.zeros(1)
    codes = np.searchsorted(classes, y) if stratified else np.zeros(len(y), dtype=np.int64)
    counts = np.bincount(codes, minlength=len(classes))
    plan = plan_split(lambda: iter([codes]), counts, params, seed, stratified)
    return plan.assign(np.arange(len(y)), codes)


def split_dataset(
    x: np.ndarray | pd.DataFrame, y: np.ndarray, params: PreprocessParams, seed: int, classification: bool
) -> dict[str, Split]:
    """The split of rows held in memory, rows in their original order."""
    assignment = assign_splits(y, params, seed, classification)
    splits = {}
    for name, code in SPLIT_CODES.items():
        rows = np.flatnonzero(assignment == code)
        part = x.iloc[rows].reset_index(drop=True) if isinstance(x, pd.DataFrame) else x[rows]
        splits[name] = Split(part, y[rows])
    return splits


# The pass -------------------------------------------------------------------------------------------------


class LabelCoder:
    """Target values to the encoded label: class indices (classification), float32 values (regression)."""

    def __init__(self, classes: list[Any] | None) -> None:
        self.classes = classes
        self.index = {label: position for position, label in enumerate(classes or [])}

    def encode(self, column: pd.Series) -> np.ndarray:
        if self.classes is None:
            return column.to_numpy(dtype="float32")
        return column.map(self.index).to_numpy(dtype="int64")


def find_classes(raw: Path, info: RawDatasetInfo, batch_rows: int) -> list[Any] | None:
    if info.task != "classification":
        return None
    values: set[Any] = set()
    for _, frame in iter_frames(raw, batch_rows, [info.target]):
        values.update(frame[info.target].dropna().unique().tolist())
    return ordered_classes(values)


def preprocess_dataset(
    raw: Path, info: RawDatasetInfo, params: PreprocessParams, seed: int, directory: Path
) -> PreprocessState:
    """Split the raw dataset into `directory` (train, val and test Parquet files, the state, the drift
    statistics) in one streaming pass, fitting the input layers on the training rows; swap the folder in at
    once, and return the state."""
    batch_rows = params.row_group_rows
    kinds = column_kinds(open_parquet(raw).schema_arrow.empty_table().to_pandas())
    inputs = describe_inputs(kinds, info, params)
    classes = find_classes(raw, info, batch_rows)
    coder = LabelCoder(classes)
    stratified = classes is not None and params.stratify
    rows = row_count(raw)
    codes_of = _codes_reader(raw, info, coder, batch_rows, stratified, rows)
    counts = np.zeros(len(classes) if stratified else 1, dtype=np.int64)
    for codes in codes_of():
        counts += np.bincount(codes, minlength=len(counts))
    plan = plan_split(codes_of, counts, params, seed, stratified, classes, info.source_label or str(raw))
    fitter = InputFitter(inputs, params, info.task)
    drift = DriftSample(inputs, params.sample_rows, seed)
    columns = [*info.feature_columns, info.target]
    with atomic_dir(directory) as folder:
        writers = {name: ParquetStream(split_path(folder, name), batch_rows) for name in SPLITS}
        try:
            for start, batch in iter_batches(raw, batch_rows, columns):
                positions = np.arange(start, start + batch.num_rows)
                labels = coder.encode(batch.column(info.target).to_pandas())
                features = batch.drop_columns([info.target])
                codes = labels if stratified else np.zeros(len(labels), dtype=np.int64)
                assignment = plan.assign(positions, codes)
                for name, code in SPLIT_CODES.items():
                    chosen = assignment == code
                    part = features.filter(pa.array(chosen)).append_column(LABEL, pa.array(labels[chosen]))
                    writers[name].write(part)
                train = assignment == SPLIT_CODES["train"]
                frame = features.filter(pa.array(train)).to_pandas()
                frame.index = pd.Index(positions[train])
                train_labels, train_positions = labels[train], positions[train]
                done = 0
                for x in training_features(frame, info, inputs):  # images a chunk at a time
                    rows = slice(done, done + len(x))
                    fitter.add(x, train_labels[rows])
                    drift.add(x, train_positions[rows])
                    done += len(x)
            kept = {name: writer.commit() for name, writer in writers.items()}
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        state = PreprocessState(
            task=info.task,
            inputs=inputs,
            target=info.target,
            feature_columns=info.feature_columns,
            rows={name: writers[name].rows for name in SPLITS},
            seed=seed,
            data_md5=info.md5,
            source=info.source,
            classes=classes,
            fitted=fitter.fitted(),
            class_counts=fitter.class_counts.tolist() if classes else None,
            image_root=info.image_root,
            split_md5=kept,
            notes={**drift.notes(), **constant_note(fitter)},
        )
        write_json(folder / "state.json", state.to_dict())
        write_json(folder / "statistics.json", drift.statistics().to_dict())
    return state


def _codes_reader(
    raw: Path, info: RawDatasetInfo, coder: LabelCoder, batch_rows: int, stratified: bool, rows: int
) -> Callable[[], Iterator[np.ndarray]]:
    """Every row's class code, in file order (zeros when not stratified: then nothing is read)."""

    def codes() -> Iterator[np.ndarray]:
        if not stratified:
            for part in position_hashes(rows, 0):
                yield np.zeros(len(part), dtype=np.int64)
            return
        for _, frame in iter_frames(raw, max(batch_rows, 1 << 18), [info.target]):
            yield coder.encode(frame[info.target])

    return codes


def training_features(frame: pd.DataFrame, info: RawDatasetInfo, inputs: ModelInputs) -> Iterator[Any]:
    """Training rows of a batch as the fitters take them: images (decoded from their files a chunk at a time, or
    from pixel columns), or the feature columns as they are."""
    if info.image_root:
        from tasks.images import absolute, decode_files

        yield from decode_files(list(absolute(info.image_root, frame["path"])), inputs.shape, IMAGE_CHUNK)
    else:
        yield feature_matrix(frame, info, inputs) if inputs.kind == "image" else frame


class DriftSample:
    """The training rows' drift statistics, batch by batch: a summary of every row of the drift columns, and a
    seeded sample (`preprocess.sample_rows`) for the numbers' decile bins."""

    def __init__(self, inputs: ModelInputs, rows: int, seed: int) -> None:
        self.inputs = inputs
        self.summary = TableSummary()
        self.sample = SmallestRows(rows)
        self.seed = seed
        self.limit = rows

    def add(self, x: Any, positions: np.ndarray) -> None:
        frame = image_means(x) if self.inputs.kind == "image" else x
        columns = drift_columns(frame.set_axis(pd.Index(positions)), self.inputs)
        self.summary.add(columns)
        numeric = [name for name in columns if name == IMAGE_COLUMN or name in {e.column for e in self.inputs.numeric}]
        if numeric:
            self.sample.add(hash_positions(positions, self.seed, SAMPLE_SALT), columns[numeric])

    def statistics(self) -> TrainingStatistics:
        return statistics_from(self.summary, self.sample.rows(), self.inputs)

    def notes(self) -> dict[str, str]:
        """What was computed on a sample rather than on every training row."""
        if self.summary.rows > self.limit and len(self.sample):
            sampled = f"{len(self.sample):,} of {self.summary.rows:,}"
            return {"drift_bins": f"drift's decile bins from a seeded sample of {sampled} training rows"}
        return {}


def constant_note(fitter: InputFitter) -> dict[str, str]:
    """Feature columns with one value in every training row (they tell the model nothing), as a note."""
    summary = fitter.columns
    constant = [
        name for name, numbers in summary.numeric.items() if numbers.rows and numbers.m2 == 0 and not numbers.missing
    ]
    constant += [name for name, text in summary.text.items() if len(text.counts) == 1 and not text.missing]
    if not constant:
        return {}
    return {
        "constant_columns": f"column(s) {constant} hold one value in every training row: they tell the model nothing"
    }


def describe_split(state: PreprocessState) -> str:
    return ", ".join(f"{name} {rows}" for name, rows in state.rows.items())
