"""Where each stage reads and writes, relative to one root folder.

`dvc.yaml` and the Prefect flow both take their paths from here, so a run folder
(for isolated Prefect runs) is just another root.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kerasflow.errors import ExpectedError


@dataclass(frozen=True)
class Layout:
    """The files of one pipeline workspace.

    `raw_dir`, `processed_dir` and `schema` default to folders under `root`; a Prefect
    run may point them elsewhere (a content-addressed cache, the project's schema)
    while its models and reports stay in its own run folder.
    """

    root: Path
    raw_dir: Path = None  # type: ignore[assignment]
    processed_dir: Path = None  # type: ignore[assignment]
    schema: Path = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        root = Path(self.root).resolve()
        defaults = {"raw_dir": root / "data" / "raw", "processed_dir": root / "data" / "processed"}
        defaults["schema"] = root / "data" / "schema.json"
        object.__setattr__(self, "root", root)
        for name, default in defaults.items():
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).resolve() if value is not None else default)

    def relative(self, path: Path) -> str:
        """A path as written in dvc.yaml (relative to the root, with forward slashes)."""
        return path.relative_to(self.root).as_posix()

    @property
    def raw_data(self) -> Path:
        return self.raw_dir / "dataset.parquet"

    @property
    def raw_meta(self) -> Path:
        return self.raw_dir / "dataset.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def model_file(self) -> Path:
        return self.models_dir / "model.keras"

    @property
    def test_outputs(self) -> Path:
        # The final model's outputs on the test split and its test loss: train scores them, evaluate weighs them.
        return self.models_dir / "test_outputs.npz"

    @property
    def saved_model_dir(self) -> Path:
        # The TensorFlow SavedModel export, for TF Serving.
        return self.models_dir / "saved_model"

    @property
    def model_config(self) -> Path:
        # What the pyfunc wrapper needs besides the .keras file: inputs, classes, decision threshold.
        return self.models_dir / "model.json"

    @property
    def statistics(self) -> Path:
        # The training split's per-column statistics (drift is measured against them); also inside the MLflow model.
        return self.models_dir / "statistics.json"

    @property
    def checkpoint_file(self) -> Path:
        return self.models_dir / "checkpoints" / "best.weights.h5"

    @property
    def backup_dir(self) -> Path:
        # Not a DVC output: it must survive a killed run so the next one resumes.
        return self.root / ".kerasflow" / "backup"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def validation_report(self) -> Path:
        return self.reports_dir / "validation.json"

    @property
    def run_file(self) -> Path:
        return self.reports_dir / "mlflow_run.json"

    @property
    def history(self) -> Path:
        return self.reports_dir / "history.csv"

    @property
    def model_summary(self) -> Path:
        return self.reports_dir / "model_summary.txt"

    @property
    def metrics(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.reports_dir / "plots"

    @property
    def predictions(self) -> Path:
        return self.plots_dir / "predictions.csv"

    @property
    def registration(self) -> Path:
        return self.reports_dir / "registration.json"

    @property
    def model_card(self) -> Path:
        return self.reports_dir / "model_card.md"


class RunFolderBusy(ExpectedError):
    """Another pipeline run is writing into the same run folder (its models/ and reports/)."""


@contextlib.contextmanager
def run_folder_lock(root: Path, remedy: str = "wait for it to finish") -> Iterator[None]:
    """One pipeline run at a time per run folder: two runs in one folder would write each other's reports/ and
    models/ and register each other's model. A `kerasflow run` holds it for the whole run, a stage of `dvc repro`
    while it runs; the second is refused at once, by name (as `dvc repro` refuses a second run in one repository)."""
    from filelock import FileLock, Timeout

    (root / ".kerasflow").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".kerasflow" / "run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(
            f"{root}: another run (a `kerasflow run`, or a stage of `dvc repro`) is writing its models/ and reports/ "
            f"here; {remedy}"
        ) from None
    try:
        yield
    finally:
        lock.release()
