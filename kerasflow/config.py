"""Typed, validated configuration: `params.yaml` parsed once, at the entry point.

Every entry point (the Prefect flow, each DVC stage) calls `load_params`, so a typo
or an out-of-range value stops the run before any stage does work, with a message
that names the key path and what was expected.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kerasflow.errors import ConfigError
from kerasflow.layers import AUGMENTATION_LAYERS, LAYER_TYPES, MERGE_LAYERS
from kerasflow.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
from kerasflow.overrides import apply_overrides, flatten
from kerasflow.sources import SOURCES, source_of

# The optimizers a params file may name: Keras knows them by these names.
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"]


class _Section(BaseModel):
    # Unknown keys are errors, never silently ignored defaults.
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(_Section):
    """Where the raw data comes from."""

    # One of kerasflow.sources.SOURCES.
    source: str = "sklearn"
    dataset: str | None = "digits"
    # A .csv / .parquet file (source: file), or a folder with one sub-folder of images per class (image_folder).
    path: str | None = None
    target: str = "target"
    task: Literal["auto", "classification", "regression"] = "auto"
    # The feature columns to use (default: every column but the target).
    features: list[str] | None = None
    # A column of free text: the model gets a TextVectorization layer for it and takes raw strings.
    text_column: str | None = None
    # [height, width] or [height, width, channels]: pixel columns of a table, or the size image folders are resized to.
    image_shape: list[PositiveInt] | None = None
    max_rows: PositiveInt | None = None
    # A CSV's field separator.
    delimiter: str = Field(",", min_length=1, max_length=1)
    # Rows converted at a time, and rows per row group of the raw Parquet file: memory follows this, not the file.
    batch_rows: PositiveInt = 65536
    # Rows whose target is missing: dropped at ingest (and counted in the raw dataset's record), or refused.
    drop_missing_target: bool = False
    # Text that means "missing" in a CSV besides the usual (empty, NA, N/A, NaN, null, ...), e.g. ["nil", "-"].
    missing_values: list[str] = Field(default_factory=list)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"must be one of {list(SOURCES)}")
        return value

    @model_validator(mode="after")
    def _check_source(self) -> IngestParams:
        problem = SOURCES[self.source].problem(self)
        if problem:
            raise ValueError(problem)
        if self.text_column and self.image_shape:
            raise ValueError("text_column and image_shape cannot both be set")
        if self.image_shape is not None and len(self.image_shape) not in (2, 3):
            raise ValueError(
                f"image_shape must be [height, width] or [height, width, channels], got {self.image_shape}"
            )
        return self


class ValidateParams(_Section):
    """Checks applied to every ingest against the recorded schema."""

    min_rows: PositiveInt = 20
    range_tolerance: float = Field(0.5, ge=0)
    max_classes: PositiveInt = 1000
    # Share of missing values a feature column may have (the model imputes them); 0 refuses any.
    max_missing_fraction: float = Field(0.0, ge=0, lt=1)


class TextParams(_Section):
    """The TextVectorization layer a text column gets (its vocabulary fitted on the training split).

    `output_mode` int gives token ids for a sequence model (an embedding, then pooling or an LSTM); multi_hot,
    count and tf_idf give one vector per text (a bag of words, of n-grams up to `ngrams`) for a dense model.
    """

    max_tokens: PositiveInt = 20000
    sequence_length: PositiveInt = 200
    standardize: Literal["lower_and_strip_punctuation", "lower", "strip_punctuation", "none"] = (
        "lower_and_strip_punctuation"
    )
    output_mode: Literal["int", "multi_hot", "count", "tf_idf"] = "int"
    # Word n-grams up to this length (1: words alone).
    ngrams: int = Field(1, ge=1, le=5)
    # With ngrams above 1: the vocabulary's `max_tokens` slots go to every word first (most frequent first), and
    # n-grams fill what is left; false: words and n-grams ranked together by count, as Keras ranks them, where
    # frequent word pairs crowd out words that a few thousand texts share.
    words_first: bool = False
    # With output_mode tf_idf: a token (word or n-gram) needs at least this many training texts to get a slot, as
    # scikit-learn's TfidfVectorizer(min_df=...); a token of one text says nothing about any other.
    min_df: PositiveInt = 1

    @model_validator(mode="after")
    def _min_df_needs_document_counts(self) -> TextParams:
        if self.min_df > 1 and self.output_mode != "tf_idf":
            raise ValueError(f"min_df counts the texts a token is in, which only output_mode tf_idf counts; got "
                             f"output_mode {self.output_mode!r} with min_df {self.min_df}")  # fmt: skip
        return self


class PreprocessParams(_Section):
    """Split, and the constants of the input layers built into the model, fitted on the training rows in the
    same streaming pass that writes the splits."""

    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    stratify: bool = True
    # Numeric inputs: auto = divide by the maximum for images, standardize (Normalization) for columns.
    # robust: minus the median, over the interquartile range; quantile: each value's rank among the training
    # values (quantile_bins knots), mapped to [-1, 1], so extreme values and skew do not matter.
    scaling: Literal["auto", "standard", "robust", "quantile", "max", "none"] = "auto"
    # Scaled numeric values beyond +-clip are cut to it (null: not cut).
    clip: PositiveFloat | None = None
    # piecewise_linear: each numeric column also enters as `quantile_bins` pieces of its range between training
    # quantiles (Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS 2022).
    numeric_encoding: Literal["none", "piecewise_linear"] = "none"
    quantile_bins: int = Field(16, ge=2, le=256)
    # A 0/1 input beside each numeric column that had missing values in training: whether the value was missing.
    missing_indicators: bool = False
    # Regression: learn the target in standard deviations; the model's last layer maps back to target units.
    scale_target: bool = True
    # Categorical columns: one_hot (StringLookup + one-hot), integer ids for an embedding in the spec, embedding
    # (a learned vector per level, of 1.6 * levels^0.56 dimensions, at most embedding_max_dim, as AutoGluon's
    # network sizes them), or auto: one-hot up to one_hot_max_levels levels, embedding above.
    categorical_encoding: Literal["auto", "one_hot", "integer", "embedding"] = "one_hot"
    one_hot_max_levels: PositiveInt = 16
    embedding_max_dim: PositiveInt = 32
    max_categories: PositiveInt = 1000
    # Numeric columns to treat as categories (e.g. a zip code); text columns are always categorical.
    categorical_columns: list[str] = Field(default_factory=list)
    text: TextParams = TextParams()
    # Rows per row group of each split file: what training shuffles and workers shard.
    row_group_rows: PositiveInt = 65536
    # Training rows (a seeded sample) the drift statistics' decile bins are computed on; every other constant
    # is computed on every training row.
    sample_rows: PositiveInt = 100_000

    @model_validator(mode="after")
    def _check_fractions(self) -> PreprocessParams:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be below 1, got {self.test_fraction} + {self.val_fraction}"
            )
        return self


class LayerSpec(BaseModel):
    """One layer: `type` plus the Keras layer's own arguments (e.g. units, filters).

    `l1` / `l2` are shorthands for a kernel regularizer; `name` and `inputs` wire a
    Functional graph.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    name: str | None = None
    inputs: list[str] | None = None
    l1: float = Field(0.0, ge=0)
    l2: float = Field(0.0, ge=0)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in LAYER_TYPES:
            raise ValueError(f"unknown layer type {value!r}; expected one of {sorted(LAYER_TYPES)}")
        return value

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments passed through to the Keras layer."""
        return dict(self.model_extra or {})


class OptimizerParams(_Section):
    name: OptimizerName = "adam"
    learning_rate: PositiveFloat = 0.001
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    # Decoupled weight decay (AdamW's; Keras applies it for every optimizer).
    weight_decay: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_momentum(self) -> OptimizerParams:
        if self.momentum and self.name not in ("sgd", "rmsprop"):
            raise ValueError(f"momentum applies to sgd and rmsprop only, not {self.name!r}")
        if self.nesterov and self.name != "sgd":
            raise ValueError("nesterov applies to sgd only")
        return self


# Tensors a functional spec may name in `inputs`, besides earlier layers (which exist depends on the data).
INPUT_TENSORS = ("input", "features", "numeric", "categorical", "text", "image")


class BackboneParams(_Section):
    """A pretrained `keras.applications` network under the layers of the spec (transfer learning)."""

    name: str
    # A local weights file (.weights.h5 / .h5), "imagenet" (downloaded on first use), or null (random).
    weights: str | None = None
    pooling: Literal["avg", "max"] = "avg"
    trainable: bool = False


class ModelParams(_Section):
    """The network: `build_model` turns this into a compiled `keras.Model`."""

    api: Literal["sequential", "functional"] = "sequential"
    # Image augmentation applied to the input, in training only (Keras' random_* layers pass through at inference).
    augmentation: list[LayerSpec] = Field(default_factory=list)
    backbone: BackboneParams | None = None
    # No layers (and no backbone) is a linear model: the output layer alone.
    layers: list[LayerSpec] = Field(default_factory=list)
    # Dropout on the input vector (a table's features, a bag of words), in training only: drawn once and shared by
    # the ensemble's members, where a dropout layer first in `layers` draws anew for each member.
    input_dropout: float = Field(0.0, ge=0, lt=1)
    output_activation: str = "auto"
    # Binary classification: the probability from which the model calls an example positive; auto: the one that
    # scores best on the validation split (for accuracy when that is the primary metric, else for macro F1).
    decision_threshold: float | Literal["auto"] = 0.5
    # k members: the layers built k times side by side on the same inputs, their outputs averaged, in one model.
    ensemble: int = Field(1, ge=1, le=32)
    # Wide and deep: a linear layer on the input features added to the network's output (before its activation),
    # so a nearly linear relation needs nothing of the hidden layers.
    linear_skip: bool = False
    # Where the wide layer starts. random: Keras' initializer. fitted: a logistic regression (ridge for a
    # regression) fitted on the same input features of the training rows, with the members' output layers at
    # zero, so training starts from the linear model and the networks learn what it misses (tasks/wide_start.py).
    wide_start: Literal["random", "fitted"] = "random"
    optimizer: OptimizerParams = OptimizerParams()
    loss: str = "auto"

    @field_validator("decision_threshold")
    @classmethod
    def _threshold_range(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 < value < 1:
            raise ValueError("must be between 0 and 1 (exclusive), or auto")
        return value

    @model_validator(mode="after")
    def _check_graph(self) -> ModelParams:
        for index, layer in enumerate(self.augmentation):
            if layer.type not in AUGMENTATION_LAYERS:
                raise ValueError(f"augmentation[{index}]: {layer.type!r} is not an augmentation layer (random_*)")
        names: set[str] = set(INPUT_TENSORS)
        for index, layer in enumerate(self.layers):
            if self.api == "sequential" and layer.inputs:
                raise ValueError(f"layers[{index}].inputs is only for api 'functional'")
            if self.api == "functional":
                for source in layer.inputs or []:
                    if source not in names:
                        raise ValueError(
                            f"layers[{index}].inputs names {source!r}, which is not one of {list(INPUT_TENSORS)} "
                            "or an earlier layer's name"
                        )
            if layer.type in MERGE_LAYERS and self.api == "functional" and len(layer.inputs or []) < 2:
                raise ValueError(f"layers[{index}] ({layer.type}) needs at least two inputs")
            if layer.name:
                if layer.name in names:
                    raise ValueError(f"layers[{index}].name {layer.name!r} is used twice")
                names.add(layer.name)
        if self.wide_start == "fitted" and not self.linear_skip:
            raise ValueError("wide_start 'fitted' starts the wide layer of linear_skip: set linear_skip: true")
        return self


class EarlyStoppingParams(_Section):
    enabled: bool = True
    monitor: str = "val_loss"
    patience: PositiveInt = 5
    min_delta: float = Field(0.0, ge=0)
    restore_best_weights: bool = True
    # Epochs before stopping is considered (and before an epoch can be the best one kept).
    start_from_epoch: int = Field(0, ge=0)
    # The model as training finds it (a fitted wide start, or the head before fine-tuning) is the first candidate,
    # scored on the validation split before the first epoch: it is kept when no epoch beats it.
    from_start: bool = False

    @model_validator(mode="after")
    def _start_is_scored_on_the_validation_split(self) -> EarlyStoppingParams:
        if self.from_start and not self.monitor.startswith("val_"):
            raise ValueError(
                f"from_start scores the start on the validation split: it needs a validation monitor "
                f"(val_loss, val_accuracy, ...), not {self.monitor!r}"
            )
        return self


class ReduceLearningRateParams(_Section):
    """Divide the learning rate when the validation loss stops improving (Keras' ReduceLROnPlateau)."""

    enabled: bool = False
    factor: float = Field(0.5, gt=0, lt=1)
    patience: PositiveInt = 5
    min_learning_rate: float = Field(1e-6, ge=0)


class FineTuneParams(_Section):
    """After training the head on a frozen backbone: unfreeze it and train on at a low learning rate."""

    epochs: int = Field(0, ge=0)
    learning_rate: PositiveFloat = 1e-5
    # Unfreeze only the last N layers of the backbone (null: all of them).
    layers: PositiveInt | None = None


class TrainParams(_Section):
    # Bounded, so a typo (1e23) stops at the params check, not inside training.
    epochs: int = Field(30, gt=0, le=1_000_000)
    batch_size: int = Field(32, gt=0, le=1 << 24)
    # null, "balanced" (inverse class frequency on the training split), or {label: weight}.
    class_weight: Literal["balanced"] | dict[str, PositiveFloat] | None = None
    fine_tune: FineTuneParams = FineTuneParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    reduce_learning_rate: ReduceLearningRateParams = ReduceLearningRateParams()
    checkpoint: bool = True
    shuffle: bool = True
    # The GPU path. auto: mixed precision on a GPU; XLA where Keras finds the model supports it;
    # MirroredStrategy across GPUs when there are several ("mirrored" also splits CPUs, for tests);
    # multi_worker: MultiWorkerMirroredStrategy across processes or machines (the cluster from TF_CONFIG, or
    # `workers` local processes started on free loopback ports). batch_size is the global batch.
    mixed_precision: bool | Literal["auto"] = "auto"
    jit_compile: bool | Literal["auto"] = "auto"
    distribute: Literal["auto", "off", "mirrored", "multi_worker"] = "auto"
    workers: PositiveInt | None = None
    # Where the `workers` run: local processes, or the pods of an Indexed Job (deploy/kubernetes/) in
    # `kubernetes_namespace`, which the train stage creates and waits for.
    launcher: Literal["local", "kubernetes"] = "local"
    kubernetes_namespace: str = Field("default", min_length=1)
    # Data streamed from the split files (row groups in a seeded order per epoch, then a shuffle buffer of
    # `shuffle_buffer` rows), or read into memory once: auto keeps splits under `memory_budget_mb` in memory.
    in_memory: bool | Literal["auto"] = "auto"
    memory_budget_mb: PositiveInt = 32
    shuffle_buffer: PositiveInt = 65536
    # Deterministic ops (tf.config.experimental.enable_op_determinism): the same seed gives the same weights,
    # so `kerasflow reproduce` matches exactly. auto: on without a GPU (about 5 % of throughput on a CPU) unless
    # jit_compile is true (Keras turns XLA off under op determinism); off on a GPU (slower there, and it
    # raises on ops that have no deterministic kernel).
    deterministic: bool | Literal["auto"] = "auto"
    # k-fold bagging of model.ensemble's k members (tasks/cross_fit.py): the training and validation rows pooled
    # in k folds, member i learning from all but fold i, early stopping on each row's loss under the member that
    # did not learn from it; the decision threshold is chosen on those out-of-fold outputs, and evaluate fits the
    # baseline and the reference on the same pooled rows.
    cross_fit: bool = False

    @model_validator(mode="after")
    def _workers_need_multi_worker(self) -> TrainParams:
        if self.workers is not None and self.distribute != "multi_worker":
            raise ValueError(f"workers: {self.workers} applies only with distribute: multi_worker")
        if self.launcher == "kubernetes" and self.workers is None:
            raise ValueError("launcher: kubernetes starts `workers` pods: set workers (and distribute: multi_worker)")
        if self.distribute == "multi_worker" and self.jit_compile is True:
            raise ValueError(
                "distribute: multi_worker cannot train with jit_compile: true (XLA does not compile "
                "MultiWorkerMirroredStrategy's collective all-reduce); use auto or false"
            )
        return self

    @model_validator(mode="after")
    def _xla_or_determinism(self) -> TrainParams:
        if self.deterministic is True and self.jit_compile is True:
            raise ValueError(
                "deterministic: true and jit_compile: true cannot both hold (Keras compiles nothing with XLA "
                "under op determinism); set one of them to false or auto"
            )
        return self

    @field_validator("class_weight", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        # YAML reads `{0: 1.0, 1: 5.0}` with integer keys; labels are compared as text.
        return {str(label): weight for label, weight in value.items()} if isinstance(value, dict) else value


class EvaluateParams(_Section):
    primary_metric: str = "auto"
    baseline: Literal["auto", "logistic_regression", "knn", "linear_regression", "ridge"] = "auto"
    # The baseline is fitted on a seeded sample of at most this many training rows.
    baseline_rows: PositiveInt = 100_000
    # Rows of a split read at a time for the baseline, its sample and the champion's re-score.
    batch_rows: PositiveInt = 65_536
    # Rows per batch when the trained model scores a split (the test split here, the validation split of a tuning
    # trial): larger than training's batches for throughput; the scores do not depend on it.
    batch_size: PositiveInt = 256
    # A strong reference beside the baseline: scikit-learn's HistGradientBoosting with default settings, fitted on
    # the baseline's rows (TF-IDF + logistic regression for text); reported, and gating only with
    # register.require_beat_reference.
    reference: bool = True
    # Resamples of the test rows for the intervals and the paired comparisons (tasks/evidence.py).
    resamples: int = Field(1000, ge=100, le=100_000)
    # Columns whose slices of the test rows are scored one by one: a categorical column by its `slice_levels` most
    # frequent values (the rest together as `other`), a numeric one by `slice_bins` quantile bins.
    slices: list[str] = Field(default_factory=list)
    slice_levels: int = Field(8, ge=1, le=100)
    slice_bins: int = Field(4, ge=2, le=20)

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        allowed = ("auto", *CLASSIFICATION_METRICS, *REGRESSION_METRICS)
        if value not in allowed:
            raise ValueError(f"unknown metric {value!r}; expected one of {list(allowed)}")
        return value


class RegisterParams(_Section):
    model_name: str = Field("kerasflow-digits-cnn", min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][\w.\- ]*$")
    # Metric name -> bound: a minimum, or a maximum for error metrics (rmse, mae).
    thresholds: dict[str, float] = Field(default_factory=dict)
    require_beat_baseline: bool = True
    require_beat_champion: bool = True
    # Whether the model must also beat the reference (evaluate.reference): off by default, it is there to show.
    require_beat_reference: bool = False
    # The share of the paired bootstrap's resamples in which the candidate must beat the champion to take
    # `champion` from it (docs/champion.md, "How sure the gate is"); a tie never moves it.
    min_confidence: float = Field(0.9, ge=0.0, le=1.0)
    # Where else min_confidence gates: `baseline` (the candidate must beat it in that share of resamples),
    # `reference`, `thresholds` (the primary metric's interval, its cautious end, must meet the bound).
    confidence_applies_to: list[Literal["baseline", "reference", "thresholds"]] = Field(default_factory=list)
    # A candidate worse than the champion by more than this on any slice of evaluate.slices with at least
    # min_slice_rows test rows stays challenger (null: slices are reported, never gate).
    max_slice_regression: float | None = Field(0.05, ge=0.0)
    min_slice_rows: int = Field(100, ge=1)

    @field_validator("thresholds")
    @classmethod
    def _known_threshold_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        allowed = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS)
        for name in value:
            if name not in allowed:
                raise ValueError(f"unknown metric {name!r}; expected one of {list(allowed)}")
        return value


class SearchDimension(_Section):
    """One dimension of the search space: exactly one of `choice`, `uniform`, `loguniform`, `int`.

    A choice may hold mappings, which set several keys of a section at once (the rest keep their
    values): `model.optimizer: {choice: [{name: sgd, momentum: 0.9}, {name: adam}]}`.
    """

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None
    step: PositiveFloat | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDimension:
        kinds = [name for name in ("choice", "uniform", "loguniform", "int") if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of choice, uniform, loguniform, int; got {kinds or 'none'}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice is empty: list at least one value")
        if self.choice is not None and not all(
            isinstance(value, (str, int, float, bool, dict)) for value in self.choice
        ):
            raise ValueError(
                "choice values must be single values (text, numbers, true/false) or mappings of them, "
                f"got {self.choice}"
            )
        for kind in ("uniform", "loguniform", "int"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: low {bounds[0]} must be below high {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: the range must be above zero, got low {self.loguniform[0]}")
        if self.step is not None and self.choice is not None:
            raise ValueError("step applies to int and uniform ranges, not to choice")
        if self.step is not None and self.loguniform is not None:
            raise ValueError("step does not apply to loguniform")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in ("choice", "uniform", "loguniform", "int") if getattr(self, name) is not None)

    def grid_values(self) -> list[Any] | None:
        """The values a grid search tries, or None for a continuous range (which a grid cannot cover)."""
        if self.choice is not None:
            return list(self.choice)
        if self.int is not None:
            step = int(self.step or 1)
            return list(range(self.int[0], self.int[1] + 1, step))
        if self.uniform is not None and self.step:
            count = int(round((self.uniform[1] - self.uniform[0]) / self.step)) + 1
            return [round(self.uniform[0] + index * self.step, 12) for index in range(count)]
        return None


# The metrics Keras computes each epoch, beside the loss, by task (tasks/model.py compiles them); a trial can be
# judged on their `val_` curves, or on an evaluate metric on the validation split.
EPOCH_METRICS_BY_TASK = {"classification": ("accuracy",), "regression": ("rmse", "mae")}
EPOCH_METRICS = ("loss", *(name for names in EPOCH_METRICS_BY_TASK.values() for name in names))
TUNE_METRICS = (*(f"val_{name}" for name in EPOCH_METRICS), *CLASSIFICATION_METRICS, *REGRESSION_METRICS)


class TuneParams(_Section):
    """Hyperparameter search (`kerasflow tune`): an Optuna study over `space`, trials as Prefect tasks."""

    n_trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    # median: stop a trial whose curve falls behind the median of earlier trials at the same epoch.
    pruner: Literal["median", "none"] = "median"
    warmup_epochs: int = Field(3, ge=0)
    startup_trials: int = Field(3, ge=0)
    # A per-epoch validation metric (val_loss, val_accuracy, ...) or the evaluate primary metric on the
    # validation split (accuracy, f1, r2, ...).
    metric: str = "val_loss"
    direction: Literal["auto", "minimize", "maximize"] = "auto"
    parallelism: PositiveInt = 1
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = None
    # Epochs per trial (default: train.epochs).
    epochs: PositiveInt | None = None
    # Wall-clock seconds for the study: once spent, no new trial starts (those running finish).
    time_budget: PositiveInt | None = None
    # How a trial is scored: on the validation split (1), or by k-fold cross-validation over the training and
    # validation rows together (k >= 2, the folds stratified by class); `auto`: 5 folds below 1,000 such rows,
    # where one validation split is too small to choose between configurations (docs/tuning.md).
    folds: Literal["auto"] | Annotated[int, Field(ge=1, le=20)] = "auto"
    # Default: the registered model's name and a hash of the space and the base params.
    study_name: str | None = None
    # Where the study is kept (default: sqlite:///optuna.db beside the tracking store).
    storage: str | None = None
    space: dict[str, SearchDimension] = Field(default_factory=dict)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in TUNE_METRICS:
            raise ValueError(f"{value!r} is not a metric a trial logs; expected one of {list(TUNE_METRICS)}")
        return value

    @model_validator(mode="after")
    def _runner(self) -> TuneParams:
        if self.task_runner == "dask" and not self.dask_address:
            raise ValueError("task_runner dask needs dask_address (the scheduler, e.g. tcp://10.0.0.5:8786)")
        if self.sampler == "grid":
            continuous = [key for key, dimension in self.space.items() if dimension.grid_values() is None]
            if continuous:
                raise ValueError(
                    f"a grid cannot cover the continuous range(s) of {continuous}: give them a step or a choice"
                )
        return self


class DriftParams(_Section):
    """When a column of new data counts as drifted from the training split."""

    # Population stability index of a numeric column over the training split's decile bins.
    psi: PositiveFloat = 0.2
    # Share of a categorical column's values that training never had.
    unseen_share: float = Field(0.05, ge=0, le=1)
    # Change in a column's share of missing values.
    missing_change: float = Field(0.1, ge=0, le=1)


class PredictParams(_Section):
    """Batch scoring with `kerasflow predict` and the batch-prediction flow."""

    # The model to score with (default: models:/<register.model_name>@champion).
    model: str | None = None
    # Rows read, scored and written at a time: memory stays flat whatever the file's size.
    batch_rows: PositiveInt = 65536
    # Refuse to write predictions when a column drifted past the thresholds.
    fail_on_drift: bool = False
    # Input columns copied into the predictions beside the row number (an id, a timestamp), to join them back.
    keep_columns: list[str] = Field(default_factory=list)
    drift: DriftParams = DriftParams()


class TrackingParams(_Section):
    experiment: str = Field("kerasflow", min_length=1)
    # Used when MLFLOW_TRACKING_URI is unset; relative sqlite paths are taken from the project root.
    tracking_uri: str = "sqlite:///mlflow.db"
    # With a tracking server: how long (seconds) one call to it may take, its retries included, before the stage
    # fails naming the server (MLflow's own MLFLOW_HTTP_REQUEST_* settings, unless you set them yourself).
    request_timeout: PositiveInt = 60


class Params(_Section):
    """The whole of params.yaml."""

    seed: int = Field(42, ge=0, lt=2**32)
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    predict: PredictParams = PredictParams()
    tune: TuneParams = TuneParams()
    tracking: TrackingParams = TrackingParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_fit_needs_members(self) -> Params:
        if not self.train.cross_fit:
            return self
        problems = {
            "model.ensemble": (self.model.ensemble < 2, "at least 2 (one member per fold)"),
            "model.linear_skip": (self.model.linear_skip, "false (the wide layer would learn from every fold)"),
            "train.fine_tune.epochs": (self.train.fine_tune.epochs > 0, "0"),
            "train.distribute": (self.train.distribute == "multi_worker", "not multi_worker (the folds are in memory)"),
        }
        wrong = [f"{key} must be {expected}" for key, (bad, expected) in problems.items() if bad]
        if wrong:
            raise ValueError("train.cross_fit: " + "; ".join(wrong))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, with keys as they are written in params.yaml."""
        return self.model_dump(by_alias=True, mode="json")


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if part not in ("function-after",))
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (check the spelling; see params.yaml for the keys each section takes)")
            continue
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"  {path or '<top level>'}: {message}{shown}")
    return "\n".join(lines)


def parse_params(tree: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params tree; raise ConfigError naming each bad key."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(tree).__name__}")
    try:
        return Params.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read, merge overrides into, and validate params.yaml; relative file paths in it are taken from its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (expected the kerasflow params.yaml)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    source = str(path) if not overrides else f"{path} with overrides {overrides}"
    return with_paths_from(parse_params(apply_overrides(tree, overrides), source), path.resolve().parent)


def with_paths_from(params: Params, folder: Path) -> Params:
    """`params` with its relative file paths (ingest.path, model.backbone.weights) taken from `folder`."""

    def absolute(value: str | None) -> str | None:
        if not value or value == "imagenet" or Path(value).is_absolute():
            return value
        return str(folder / value)

    ingest = params.ingest.model_copy(update={"path": absolute(params.ingest.path)})
    model = params.model
    if model.backbone is not None:
        backbone = model.backbone.model_copy(update={"weights": absolute(model.backbone.weights)})
        model = model.model_copy(update={"backbone": backbone})
    return params.model_copy(update={"ingest": ingest, "model": model})


def applicable_params(params: Params, state: Any) -> dict[str, Any]:
    """The flattened params that apply to this run's data (`state`: preprocess's record of it), as a run logs
    them: none of another source's, a binary decision threshold only for two classes, text settings only with a
    text column, fine-tuning only with a backbone."""
    flat = flatten(params.to_dict())
    skip = ["tune.", "predict.", *source_of(params.ingest).unused_params]
    if state.n_classes != 2:
        skip.append("model.decision_threshold")
    if not any(entry.kind == "text" for entry in state.inputs.columns):
        skip.append("preprocess.text.")
    if not any(entry.kind == "categorical" for entry in state.inputs.columns):
        skip += ["preprocess.categorical_encoding", "preprocess.max_categories"]
    if state.task != "regression":
        skip.append("preprocess.scale_target")
    if params.model.backbone is None:
        skip.append("train.fine_tune.")
    if params.train.early_stopping.enabled is False:
        skip += [f"train.early_stopping.{key}" for key in ("monitor", "patience", "min_delta", "restore_best_weights")]
    return {name: value for name, value in flat.items() if not any(name.startswith(prefix) for prefix in skip)}
