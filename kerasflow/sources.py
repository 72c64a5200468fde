"""The data sources `ingest.source` may name: one entry each, holding everything kerasflow knows about it.

An entry says where its loader is, what its params need, whether `ingest.path` names the user's file
or folder, and which built-in datasets it offers. Everything else follows from the entry: the params
check, the ingest stage's DVC dependency and cache key (the files under `ingest.path`), the flow run's
workload tag, and which `ingest.*` params are logged to MLflow.

Adding a source: write its loader in tasks/ingest.py (`open_<name>(params) -> SourceData`, Arrow record
batches a block at a time) and add its entry to `SOURCES` below. No other file changes.

The loader is named by its dotted path, not imported: this module is part of the params schema, which
every stage imports, and the loaders' code (TensorFlow for images, pyarrow's readers) belongs to ingest alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kerasflow.config import IngestParams

# The files an image folder holds (ingest, predict and init read the same ones).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# A numeric target is a class label when it holds only whole numbers, at most this many distinct ones.
MAX_CLASSES = 20


def target_task(numeric: bool, whole: bool, distinct: int) -> str:
    """classification or regression: labels (text, bool) and few whole numbers are classes, other numbers a
    quantity. The one rule ingest (on the whole target) and init (on its counts) both apply."""
    if not numeric:
        return "classification"
    return "classification" if whole and distinct <= MAX_CLASSES else "regression"


# What each `ingest.*` key a source may require is, for the message that asks for it.
REQUIRED_HELP = {
    "path": "the file or folder to read",
    "image_shape": "[height, width, channels], the size images are resized to",
}
# The `ingest.*` params of a source that reads the user's file, and of one that offers built-in datasets.
PATH_PARAMS = ("ingest.path", "ingest.target", "ingest.features", "ingest.text_column")
DATASET_PARAMS = ("ingest.dataset",)


@dataclass(frozen=True)
class DataSource:
    """One kind of source."""

    name: str
    # "module:function": the function takes IngestParams and returns tasks.ingest.SourceData.
    loader: str
    # Whether ingest.path names the user's file or folder (else ingest.dataset picks one of `datasets`), and
    # what it must be, for the message when it is missing.
    names_path: bool = False
    path_is: str = ""
    datasets: tuple[str, ...] = ()
    # Further ingest.* keys it cannot do without.
    requires: tuple[str, ...] = ()

    def problem(self, params: IngestParams) -> str | None:
        """What `params` lack for this source, or None."""
        if self.datasets and params.dataset not in self.datasets:
            return f"dataset must be one of {list(self.datasets)} for source {self.name!r}, got {params.dataset!r}"
        required = ("path",) * self.names_path + self.requires
        missing = [key for key in required if not getattr(params, key)]
        if not missing:
            return None
        help_for = {**REQUIRED_HELP, "path": self.path_is or REQUIRED_HELP["path"]}
        if required == ("path",):
            return f"path is required for source {self.name!r} ({help_for['path']})"
        wanted = " and ".join(f"{key} ({help_for[key]})" for key in required)
        return f"source {self.name!r} needs {wanted}"

    def open(self, params: IngestParams) -> Any:
        """The source opened for reading (tasks.ingest.SourceData)."""
        module, _, function = self.loader.partition(":")
        opener: Callable[[IngestParams], Any] = getattr(importlib.import_module(module), function)
        return opener(params)

    def path(self, params: IngestParams) -> Path | None:
        """The user's file or folder: a DVC dependency of ingest, and what its cache key hashes."""
        return Path(params.path) if self.names_path and params.path else None

    def label(self, params: IngestParams) -> str:
        """The data's short name in the flow run's `workload:` tag: the built-in dataset, or the file's name."""
        return Path(params.path).name if self.names_path and params.path else str(params.dataset)

    @property
    def unused_params(self) -> tuple[str, ...]:
        """The `ingest.*` params that do not apply to this source (left out of the MLflow run's params)."""
        return DATASET_PARAMS if self.names_path else PATH_PARAMS


SOURCES = {
    source.name: source
    for source in (
        DataSource(
            "sklearn", "tasks.ingest:open_sklearn", datasets=("digits", "breast_cancer", "diabetes", "iris", "wine")
        ),
        DataSource("keras", "tasks.ingest:open_keras", datasets=("mnist", "fashion_mnist", "boston_housing", "imdb")),
        DataSource("file", "tasks.ingest:open_file", names_path=True, path_is="a .csv or .parquet file"),
        DataSource(
            "image_folder",
            "tasks.ingest:open_image_folder",
            names_path=True,
            path_is="a folder with one sub-folder per class",
            requires=("image_shape",),
        ),
    )
}


def source_of(params: IngestParams) -> DataSource:
    return SOURCES[params.source]
