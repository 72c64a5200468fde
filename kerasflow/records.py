"""Typed records that one step hands the next, defined once.

- `RawDatasetInfo`: what ingest wrote (data/raw/dataset.json): the target, the task, the columns.
- `PreprocessState`: what preprocess wrote beside the splits (state.json), the one record of the split and
  fitted inputs: the model builder, training, evaluation and tuning all read it. Its parts are the inputs
  (`ModelInputs`) and `FittedInputs`, the constants the input layers were adapted to on the training split.
- `TrainingResult`: what train wrote (reports/mlflow_run.json): the MLflow run, the logged model, its digest.
- `Evaluation`: what evaluate wrote (reports/metrics.json) for register: the model's and the baseline's
  test metrics and, as `champion_rescored`, the current champion's on the same rows (`ChampionScore`); how
  sure each comparison is (`Comparison`, from the paired bootstrap) and the primary metric per slice
  (`SliceScore`).

The model's own interface (`ModelInputs`, and `ModelConfig`, which `PreprocessState.model_config` derives)
lives in `kerasflow.model_interface`, which the logged model carries with it: the served model needs its
inputs, task, classes and threshold, not the training-only constants.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Self, TypeVar

from kerasflow.io import read_json, write_json
from kerasflow.model_interface import ModelConfig, ModelInputs

T = TypeVar("T")


class Record:
    """What every record shares: `from_dict` builds it from its JSON form (`from_dict` below)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return from_dict(cls, data)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """A record (a dataclass) from its JSON form, the one reader every record uses. Keys the record does not have
    are ignored (a file written by a newer version) and missing ones take the field's default (an older file);
    a field whose type is a record, or a dict or list of them, is built from its part of `data`."""
    hints = typing.get_type_hints(cls)
    return cls(**{item.name: convert(hints[item.name], data[item.name]) for item in fields(cls) if item.name in data})  # type: ignore[arg-type]


def convert(hint: Any, value: Any) -> Any:
    """`value` as the type `hint` names: records built (by their own `from_dict` where the class has one, as the
    model interface's do), inside optionals, dicts and lists; a number where a string is expected as a string
    (a registry version); anything else as it is."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return convert(present[0], value) if len(present) == 1 else value
    if origin is dict and len(args) == 2:
        return {key: convert(args[1], item) for key, item in value.items()}
    if origin is list and args:
        return [convert(args[0], item) for item in value]
    if isinstance(hint, type) and is_dataclass(hint):
        return hint.from_dict(value) if hasattr(hint, "from_dict") else from_dict(hint, value)
    if hint is str and isinstance(value, int | float):
        return str(value)
    return value


@dataclass(frozen=True)
class RawDatasetInfo(Record):
    """The raw dataset's description, written by ingest beside the Parquet file."""

    target: str
    task: str
    feature_columns: list[str]
    image_shape: list[int] | None = None
    text_column: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    md5: str = ""
    file: str = ""
    # An image folder: the folder the raw table's `path` column is relative to (the images stay files there).
    image_root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def source_label(self) -> str:
        return source_label(self.source)


@dataclass(frozen=True)
class ValidationReport(Record):
    """What validate found (reports/validation.json): preprocess runs only on a passed report of the same data."""

    ok: bool
    md5: str
    problems: list[str] = field(default_factory=list)
    rows: int | None = None
    columns: int | None = None
    # Which schema the data was checked against: recorded | inferred | new source (replacing `replaced_schema_of`).
    schema: str | None = None
    replaced_schema_of: str | None = None
    statistics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As written to disk: the fields a failed report does not have are left out."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def passed_for(self, md5: str) -> bool:
        """Whether this report passes the raw data whose md5 is `md5`."""
        return self.ok and self.md5 == md5


@dataclass(frozen=True)
class ColumnSchema(Record):
    """One column of the recorded schema: its kind (numeric, string, ...), whether training saw it missing, and a
    numeric column's range."""

    kind: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class DatasetSchema(Record):
    """The recorded schema (data/schema.json), inferred on a source's first ingest: every later ingest of the
    same `source` is checked against it (columns, kinds, ranges, the target's labels)."""

    columns: dict[str, ColumnSchema]
    target: str
    task: str
    image_shape: list[int] | None = None
    # A classification target's labels (as strings).
    labels: list[str] | None = None
    # The source it was recorded for (`sklearn:digits`, `file:houses.csv`): another source records its own.
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As on disk: `labels` only for classification, `source` once recorded."""
        found: dict[str, Any] = {
            "columns": {name: column.to_dict() for name, column in self.columns.items()},
            "target": self.target,
            "task": self.task,
            "image_shape": self.image_shape,
        }
        found |= {key: value for key in ("labels", "source") if (value := getattr(self, key)) is not None}
        return found


def source_label(source: dict[str, Any]) -> str:
    """`sklearn:digits`, `file:/path/houses.csv`: where the data came from, in one string."""
    return ":".join(str(source[key]) for key in ("source", "dataset", "path") if source.get(key))


@dataclass(frozen=True)
class PreprocessState(Record):
    """What preprocess found out about the data and fitted on its training rows, written beside the splits."""

    task: str
    inputs: ModelInputs
    target: str
    feature_columns: list[str]
    rows: dict[str, int]
    seed: int
    data_md5: str
    source: dict[str, Any] = field(default_factory=dict)
    classes: list[Any] | None = None
    # The input layers' constants, fitted on the training rows (the model is built from them, no adapt).
    fitted: FittedInputs = field(default_factory=lambda: FittedInputs())
    # Training rows per class (class weights, the baseline's sample).
    class_counts: list[int] | None = None
    # An image folder's root: the splits hold paths relative to it.
    image_root: str | None = None
    # The md5 of each split file (the hash DVC records for it).
    split_md5: dict[str, str] = field(default_factory=dict)
    # What was computed on a bounded sample instead of every training row, and how large.
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def source_label(self) -> str:
        return source_label(self.source)

    @property
    def n_classes(self) -> int:
        return len(self.classes or [])

    @property
    def output_units(self) -> int:
        """The output layer's width: one per class past two, else one (a sigmoid, or a regression's value)."""
        return self.n_classes if self.task == "classification" and self.n_classes > 2 else 1

    @property
    def string_inputs(self) -> bool:
        """Whether the model takes strings (categorical or text columns)."""
        return bool(self.inputs.strings)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "inputs": self.inputs.to_dict()}

    def model_config(self, threshold: float) -> ModelConfig:
        return ModelConfig(self.task, self.inputs, self.classes, threshold)


@dataclass(frozen=True)
class NumericFit(Record):
    """One numeric column: the value that fills its gaps, its normalization (None: none), its training quantiles
    (`knots`, for quantile scaling and the piecewise-linear encoding) and whether training saw it missing."""

    fill: float
    mean: float | None = None
    variance: float | None = None
    knots: list[float] | None = None
    missing: bool = False


@dataclass(frozen=True)
class TextFit(Record):
    """A text column's TextVectorization: its vocabulary (without padding and OOV), settings, and for tf_idf the
    inverse document frequency of each vocabulary entry."""

    vocabulary: list[str]
    sequence_length: int
    standardize: str
    output_mode: str = "int"
    ngrams: int = 1
    idf: list[float] | None = None


@dataclass(frozen=True)
class ImageScaling(Record):
    """How images are scaled inside the model: divided by `scale`'s inverse, standardized, or left alone."""

    kind: str  # max | standard | none
    scale: float = 1.0
    mean: list[float] | None = None
    variance: list[float] | None = None


@dataclass(frozen=True)
class TargetScaling(Record):
    """A regression target's training mean and standard deviation: the model learns in standard deviations."""

    mean: float
    std: float


@dataclass(frozen=True)
class FittedInputs(Record):
    """The constants the input layers were adapted to on the training split (keyed by column or input name)."""

    numeric: dict[str, NumericFit] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    text: dict[str, TextFit] = field(default_factory=dict)
    categorical_encoding: str = "one_hot"
    image_scaling: ImageScaling | None = None
    target: TargetScaling | None = None
    # How the numeric columns enter: scaled (standard / robust / quantile / max / none), clipped at +-clip, and
    # with the piecewise-linear encoding and the missing-value indicators beside them.
    numeric_scaling: str = "standard"
    clip: float | None = None
    numeric_encoding: str = "none"
    missing_indicators: bool = False
    # Categorical inputs that get a learned embedding, and its width (the others are one-hot).
    embedded: dict[str, int] = field(default_factory=dict)

    def vocabulary_size(self, source: str = "input") -> int | None:
        """The input_dim an embedding of `source` needs: the text vocabulary (with padding and OOV), or
        the largest categorical vocabulary (with OOV) for the `categorical` tensor or data without text."""
        text = [len(spec.vocabulary) + 2 for spec in self.text.values() if spec.output_mode == "int"]
        categories = [len(vocabulary) + 1 for vocabulary in self.categorical.values()]
        if source == "categorical" or not text:
            return max(categories) if categories else None
        return text[0]


@dataclass(frozen=True)
class TrainingResult(Record):
    """The train stage's record for the later stages (reports/mlflow_run.json): the run they reopen, the model
    they score and register, and the digest of the files that passed the round trip."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str
    artifacts_sha256: str
    # A local store as params.yaml names it (no machine's absolute path in a file git keeps).
    tracking_uri: str
    run_url: str | None = None
    epochs_trained: int | None = None
    best_epoch: int | None = None
    # train.cross_fit: the members, each of which learnt from all but one fold of the training and validation rows.
    cross_fit_members: int | None = None

    @classmethod
    def read(cls, path: Path) -> TrainingResult:
        return from_dict(cls, read_json(path))

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Below this many test rows, a decision says how much one row moves the score.
SMALL_SPLIT = 200


@dataclass(frozen=True)
class Comparison(Record):
    """The candidate against another model on the same test rows, from the paired bootstrap (`tasks.evidence`):
    both scores, the difference (candidate - other), its 95 % interval, and the share of resamples in which the
    candidate is better (None: no resample could be scored)."""

    against: str
    metric: str
    candidate: float
    other: float
    difference: float
    low: float | None
    high: float | None
    p_better: float | None
    rows: int
    resamples: int

    def sentence(self) -> str:
        """`beats the champion by 0.011 (95 % interval of the difference -0.006 to 0.028; better in 89 % of
        resamples)`."""
        from kerasflow.metrics import compare

        verdict = {1: "beats", 0: "ties with", -1: "trails"}[compare(self.metric, self.candidate, self.other)]
        amount = f" by {abs(self.difference):.4f}" if verdict != "ties with" else ""
        return f"{verdict} {self.against}{amount} {self.evidence()}"

    def evidence(self) -> str:
        """`(95 % interval of the difference -0.006 to +0.028; better in 89 % of 1000 resamples)`."""
        if self.low is None or self.high is None or self.p_better is None:
            return "(no resample could be scored)"
        return (
            f"(95 % interval of the difference {self.low:+.4f} to {self.high:+.4f}; "
            f"better in {100 * self.p_better:.0f} % of {self.resamples} resamples)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_size_note(rows: int, metric: str) -> str:
    """What a small test split means for `metric`: "on 17 test rows, one row is 5.9 points of accuracy"."""
    if rows >= SMALL_SPLIT or rows <= 0:
        return ""
    if metric == "accuracy":
        return f"on {rows} test rows, one row is {100 / rows:.1f} points of accuracy"
    return f"on only {rows} test rows"


@dataclass(frozen=True)
class SliceScore(Record):
    """The primary metric on one slice of the test rows (a column's value or quantile bin; `all rows` for the
    whole split): the candidate's with its 95 % interval, the baseline's and the re-scored champion's."""

    column: str
    value: str
    rows: int
    candidate: float | None
    low: float | None = None
    high: float | None = None
    baseline: float | None = None
    champion: float | None = None

    @property
    def key(self) -> str:
        return f"{self.column}={self.value}" if self.column else self.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChampionScore(Record):
    """The current champion re-scored on this run's test rows: its `test` metrics, or why it was `skipped`
    (it cannot take this data: other columns, classes or image size)."""

    version: str
    test: dict[str, float] | None = None
    test_rows: int | None = None
    skipped: str | None = None
    # The candidate against this champion on the same rows (the paired bootstrap), when both were scored.
    comparison: Comparison | None = None

    def metric(self, name: str) -> float | None:
        """The champion's `name` on these rows; None when it was not scored or has no such metric."""
        return (self.test or {}).get(name)

    def summary(self, name: str) -> str:
        """One line for the log: the champion's `name` on these rows, or why it was not scored."""
        value = self.metric(name)
        if value is None:
            return self.skipped or f"the champion (version {self.version}) has no {name}"
        return f"champion (version {self.version}) {value:.4f} on the same rows"

    def to_dict(self) -> dict[str, Any]:
        """As on disk: `version` with `test`, `test_rows` and `comparison`, or with `skipped`."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Evaluation(Record):
    """Evaluate's result, written to reports/metrics.json (DVC's metrics file) and read by register."""

    task: str
    primary_metric: str
    test: dict[str, float]
    # The scikit-learn baseline's metrics on the same rows (its name: `baseline_name`).
    baseline: dict[str, float]
    baseline_rows: int
    beats_baseline: bool
    test_rows: int
    decision_threshold: float | None = None
    epochs_trained: int | None = None
    best_epoch: int | None = None
    # None: there was no champion when evaluate ran.
    champion_rescored: ChampionScore | None = None
    # The strong reference's metrics on the same rows (evaluate.reference; None: not fitted).
    reference: dict[str, float] | None = None
    # The 95 % interval [low, high] of the model's primary metric (the bootstrap over the test rows).
    interval: list[float | None] | None = None
    # The candidate against the `baseline` and the `reference` on the same resamples.
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    # The primary metric per slice of the test rows (the first: all rows), evaluate.slices.
    slices: list[SliceScore] = field(default_factory=list)
    # Which scikit-learn models the baseline and the reference are (on disk, as the `name` in their metrics).
    baseline_name: str = ""
    reference_name: str | None = None

    @property
    def beats_reference(self) -> bool | None:
        from kerasflow.metrics import is_better

        if not self.reference or self.primary_metric not in self.reference:
            return None
        return is_better(self.primary_metric, self.score, self.reference[self.primary_metric])

    @property
    def score(self) -> float:
        """The model's primary metric on the test split."""
        return self.test[self.primary_metric]

    def with_champion(self, champion: ChampionScore | None) -> Evaluation:
        return replace(self, champion_rescored=champion)

    @property
    def split_note(self) -> str:
        return split_size_note(self.test_rows, self.primary_metric)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """From metrics.json, as this version writes it or an older one did (without intervals and slices). On
        disk the slices are keyed `column=value` (flat for `dvc metrics show`), in order, and the baseline's and the
        reference's names are among their metrics."""
        baseline = dict(data.get("baseline") or {})
        reference = dict(data["reference"]) if data.get("reference") else None
        names = {"baseline_name": baseline.pop("name", ""), "reference_name": (reference or {}).pop("name", None)}
        slices = list((data.get("slices") or {}).values())
        return from_dict(cls, {**data, "baseline": baseline, "reference": reference, "slices": slices, **names})

    def to_dict(self) -> dict[str, Any]:
        champion = self.champion_rescored.to_dict() if self.champion_rescored else None
        found = {
            **asdict(self),
            "champion_rescored": champion,
            "comparisons": {name: value.to_dict() for name, value in self.comparisons.items()},
            "slices": {entry.key: entry.to_dict() for entry in self.slices},
            "baseline": {"name": self.baseline_name, **self.baseline},
            "reference": {"name": self.reference_name, **self.reference} if self.reference is not None else None,
        }
        del found["baseline_name"], found["reference_name"]
        for optional in ("reference", "interval", "comparisons", "slices"):  # not measured: the file as before
            if not found[optional]:
                found.pop(optional)
        return found

    @classmethod
    def read(cls, path: Path) -> Evaluation:
        return cls.from_dict(read_json(path))

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())


# Register: the gate's verdict and the registry version.


# The two aliases a registered version gets.
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Decision(Record):
    """The gate's verdict for one candidate."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alias": self.alias}


@dataclass(frozen=True)
class Registration(Record):
    """What register wrote (reports/registration.json): the version, the champion it was judged against
    (re-scored on the same rows), the serving check's detail and the gate's decision."""

    model_name: str
    version: str
    run_id: str
    decision: Decision
    champion: ChampionScore | None = None
    smoke_test: str = ""
    # The candidate against the baseline and the reference on the same resamples (the champion's is in `champion`).
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    @property
    def previous_champion(self) -> str | None:
        return self.champion.version if self.champion else None

    @property
    def failed_checks(self) -> list[str]:
        return [check for check, passed in self.decision.checks.items() if not passed]

    @property
    def alias(self) -> str:
        return self.decision.alias

    @property
    def reasons(self) -> list[str]:
        return self.decision.reasons

    def to_dict(self) -> dict[str, Any]:
        """As on disk (and in the run's registration.json): the decision's fields at the top level."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "previous_champion": self.previous_champion,
            "champion_rescored": self.champion.to_dict() if self.champion else None,
            "smoke_test": self.smoke_test,
            "run_id": self.run_id,
            **self.decision.to_dict(),
            "comparisons": {name: found.to_dict() for name, found in self.comparisons.items()},
        }


@dataclass(frozen=True)
class PipelineResult(Record):
    """What a pipeline run (`flows.training.training_pipeline`) returns: its MLflow run, where its outputs are,
    and the evaluate and register stages' records."""

    run_id: str
    workdir: str
    tracking_uri: str
    training: TrainingResult
    evaluation: Evaluation
    registration: Registration
    # register.min_slice_rows: the slices the terminal's summary names.
    min_slice_rows: int = 1

    @property
    def run_url(self) -> str | None:
        return self.training.run_url

    @property
    def experiment_id(self) -> str:
        return self.training.experiment_id

    @property
    def metrics(self) -> dict[str, float]:
        """The model's test metrics."""
        return self.evaluation.test

    @property
    def baseline(self) -> dict[str, Any]:
        return self.evaluation.baseline

    @property
    def reference(self) -> dict[str, Any]:
        return self.evaluation.reference or {}

    def to_dict(self) -> dict[str, Any]:
        """As `kerasflow run --json` prints it."""
        evaluation = self.evaluation.to_dict()
        return {
            "run_id": self.run_id,
            "run_url": self.run_url,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "workdir": self.workdir,
            "metrics": self.metrics,
            # As in metrics.json: each with its `name`.
            "baseline": evaluation["baseline"],
            "reference": evaluation.get("reference") or {},
            "evaluation": evaluation,
            "min_slice_rows": self.min_slice_rows,
            "registration": self.registration.to_dict(),
        }


# Tuning: a study's plan, its trials, its summary and what it registered.


@dataclass(frozen=True)
class StudyPlan(Record):
    """What a trial needs to run anywhere (a Dask worker gets a pickled copy): the study, the MLflow
    store and parent run, the params every trial starts from, and where the processed data is."""

    study: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    base: dict[str, Any]
    processed_dir: Path


@dataclass(frozen=True)
class TrialResult(Record):
    """How a trial ended: complete (with its value), pruned or failed (with why)."""

    number: int
    state: str
    value: float | None
    epochs: int
    run_id: str
    note: str = ""


@dataclass(frozen=True)
class BestTrial(Record):
    """The study's best trial: its number, its value of the objective and the values it tried."""

    trial: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class StudySummary(Record):
    """The study after its trials (the parent MLflow run's record): how the trials ended, the best one, the
    trials table (Markdown) and each searched key's importance."""

    study: str
    storage: str
    parent_run_id: str
    objective: str
    direction: str
    counts: dict[str, int]
    best: BestTrial | None
    table: str = ""
    importances: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyRegistration(Record):
    """What a study registered (the parent run's registration.json): the best configuration's registry version,
    its test metrics beside the baseline's, and whether an earlier run of the study had registered it already."""

    model_name: str
    version: str
    alias: str
    reasons: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    pipeline_run_id: str | None = None
    reused: bool = False
    # The registration's whole record, as register wrote it (registration.json keeps every key).
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, registration: Registration, evaluation: Evaluation, pipeline_run_id: str) -> StudyRegistration:
        return cls(
            registration.model_name,
            registration.version,
            registration.alias,
            registration.reasons,
            evaluation.test,
            {"name": evaluation.baseline_name, **evaluation.baseline},  # as registration.json has had it
            pipeline_run_id,
            record=registration.to_dict(),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyRegistration:
        """From registration.json, which holds the registration's own keys beside the study's."""
        return from_dict(cls, {**data, "record": dict(data)})

    def to_dict(self) -> dict[str, Any]:
        found = {**self.record, **asdict(self)}
        found.pop("record")
        return found


@dataclass(frozen=True)
class StudyResult(Record):
    """What a tuning run (`flows.tuning.tuning_pipeline`) returns: the study's summary, what it registered, and
    where its parent MLflow run is."""

    summary: StudySummary
    registration: StudyRegistration
    experiment_id: str
    tracking_uri: str
    run_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As `kerasflow tune --json` prints it: the summary's keys, then the registration and the run's place."""
        return {
            **asdict(self.summary),
            "registration": self.registration.to_dict(),
            "run_url": self.run_url,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
        }


# Drift: new rows against the training split (`kerasflow predict`'s <output>.drift.json; the drift event's payload).


@dataclass(frozen=True)
class ColumnDrift(Record):
    """One column of new data against training: PSI for a number, the unseen share for a category."""

    kind: str  # numeric | categorical
    missing_share_training: float
    missing_share_new: float
    psi: float | None = None
    unseen_share: float | None = None
    unseen_examples: dict[str, int] | None = None  # up to five unseen categories a batch, with their counts
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def value(self) -> float:
        """What is compared with a threshold: the PSI, or the unseen share."""
        return self.psi if self.psi is not None else self.unseen_share or 0.0


@dataclass(frozen=True)
class DriftReport(Record):
    """New rows against the training split, per column (the `<output>.drift.json` beside predictions)."""

    rows: int
    training_rows: int
    thresholds: dict[str, float]
    columns: dict[str, ColumnDrift]

    @property
    def drifted(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]

    def reasons(self) -> list[tuple[str, str]]:
        """Each drifted column with why: `("rm", "PSI 3.41")`."""
        return [(name, ", ".join(self.columns[name].reasons)) for name in self.drifted]

    def to_dict(self) -> dict[str, Any]:
        """As written to disk: a column's absent measures are left out, `drifted` names the drifted columns."""
        columns = {
            name: {key: value for key, value in asdict(column).items() if value is not None}
            for name, column in self.columns.items()
        }
        return {
            "rows": self.rows,
            "training_rows": self.training_rows,
            "thresholds": self.thresholds,
            "columns": columns,
            "drifted": self.drifted,
        }


def summary_line(report: DriftReport | None) -> str:
    """`drift: rm PSI 3.41, zip unseen categories 12.0%` (or `drift: none past the thresholds`, or not checked for
    a model without training statistics: `report` None)."""
    if report is None:
        return "drift: not checked (the model carries no training statistics)"
    parts = [f"{name} {reasons}" for name, reasons in report.reasons()]
    return "drift: " + ("; ".join(parts) if parts else "none past the thresholds")


@dataclass(frozen=True)
class PredictionResult(Record):
    """Where the predictions went, what scored them, and the drift found."""

    output: Path
    rows: int
    seconds: float
    model_uri: str
    model_name: str
    model_version: str
    drift: DriftReport | None  # None: the model carries no training statistics
    drift_report: Path
    run_id: str

    @property
    def summary(self) -> str:
        return summary_line(self.drift)
