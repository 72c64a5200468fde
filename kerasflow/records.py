"""Typed records that one step hands the next, defined once.

- `RawDatasetInfo`: what ingest wrote (data/raw/dataset.json): the target, the task, the columns.
- `PreprocessState`: what preprocess wrote beside the splits (state.json): the inputs, the classes.
- `FittedInputs`: the constants the input layers were adapted to on the training split.

The model's own interface (`ModelInputs`, `ModelConfig`) lives in `kerasflow.model_interface`,
which the logged model carries with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kerasflow.model_interface import ModelConfig, ModelInputs


@dataclass(frozen=True)
class RawDatasetInfo:
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RawDatasetInfo:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def source_label(self) -> str:
        return source_label(self.source)


def source_label(source: dict[str, Any]) -> str:
    """`sklearn:digits`, `file:/path/houses.csv`: where the data came from, in one string."""
    return ":".join(str(source[key]) for key in ("source", "dataset", "path") if source.get(key))


@dataclass(frozen=True)
class PreprocessState:
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
    fitted: FittedInputs = None  # type: ignore[assignment]
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
    def string_inputs(self) -> bool:
        """Whether the model takes strings (categorical or text columns)."""
        return bool(self.inputs.strings)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessState:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        fitted = FittedInputs.from_dict(data["fitted"]) if data.get("fitted") else FittedInputs()
        return cls(**{**values, "inputs": ModelInputs.from_dict(data["inputs"]), "fitted": fitted})

    def to_dict(self) -> dict[str, Any]:
        fitted = asdict(self.fitted) if self.fitted is not None else None
        return {**asdict(self), "inputs": self.inputs.to_dict(), "fitted": fitted}

    def model_config(self, threshold: float) -> ModelConfig:
        return ModelConfig(self.task, self.inputs, self.classes, threshold)


@dataclass(frozen=True)
class NumericFit:
    """One numeric column: the training mean that fills its gaps, and its normalization (None: none)."""

    fill: float
    mean: float | None = None
    variance: float | None = None


@dataclass(frozen=True)
class TextFit:
    """A text column's TextVectorization: its vocabulary (without padding and OOV) and settings."""

    vocabulary: list[str]
    sequence_length: int
    standardize: str


@dataclass(frozen=True)
class ImageScaling:
    """How images are scaled inside the model: divided by `scale`'s inverse, standardized, or left alone."""

    kind: str  # max | standard | none
    scale: float = 1.0
    mean: list[float] | None = None
    variance: list[float] | None = None


@dataclass(frozen=True)
class TargetScaling:
    """A regression target's training mean and standard deviation: the model learns in standard deviations."""

    mean: float
    std: float


@dataclass(frozen=True)
class FittedInputs:
    """The constants the input layers were adapted to on the training split (keyed by column or input name)."""

    numeric: dict[str, NumericFit] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    text: dict[str, TextFit] = field(default_factory=dict)
    categorical_encoding: str = "one_hot"
    image_scaling: ImageScaling | None = None
    target: TargetScaling | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FittedInputs:
        return cls(
            numeric={name: NumericFit(**value) for name, value in data.get("numeric", {}).items()},
            categorical={name: list(values) for name, values in data.get("categorical", {}).items()},
            text={name: TextFit(**value) for name, value in data.get("text", {}).items()},
            categorical_encoding=data.get("categorical_encoding", "one_hot"),
            image_scaling=ImageScaling(**data["image_scaling"]) if data.get("image_scaling") else None,
            target=TargetScaling(**data["target"]) if data.get("target") else None,
        )

    def vocabulary_size(self, source: str = "input") -> int | None:
        """The input_dim an embedding of `source` needs: the text vocabulary (with padding and OOV), or
        the largest categorical vocabulary (with OOV) for the `categorical` tensor or data without text."""
        text = [len(spec.vocabulary) + 2 for spec in self.text.values()]
        categories = [len(vocabulary) + 1 for vocabulary in self.categorical.values()]
        if source == "categorical" or not text:
            return max(categories) if categories else None
        return text[0]
