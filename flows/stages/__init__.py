"""The pipeline's stages, defined once.

The stage map (start here):

    stage       flows/stages/   the work, in tasks/                          writes
    ingest      ingest.py       ingest.py (sources: kerasflow/sources.py)    data/raw/
    validate    validate.py     validate.py                                  reports/validation.json, data/schema.json
    preprocess  preprocess.py   preprocess.py, features.py, drift.py         data/processed/
    train       train.py        model.py, fit.py, train.py, datasets.py,     models/ (with the final model's
                                accelerator.py, resume.py, wide_start.py     test outputs), reports/history.csv
                                (cluster.py across workers)
    evaluate    evaluate.py     evaluate.py, evidence.py, champion.py        reports/metrics.json, reports/plots/
                                (weighs train's test outputs: no TensorFlow unless a champion is re-scored)
    register    register.py     register.py                                  reports/registration.json, the registry

Two front ends run this one list (`build_stages` below): the Prefect flow (flows/training.py, whose `as_task`
makes each stage's `run` a Prefect task at run time, which is why no `@task` appears in a stage module) and
`dvc repro` (dvc.yaml is generated from the list; each stage runs `python -m flows.dvc_stage NAME`). A stage's
`run` returns its record (kerasflow/records.py): what ingest wrote, the validation report, the preprocess state,
the training result, the evaluation, the registration.

Each stage is one module here (`flows/stages/train.py`, ...) whose `run(params, context)` reads
its inputs from the layout, calls the work in `tasks/`, writes its outputs atomically and does
its MLflow logging. The Prefect flow wraps these functions as tasks; `python -m flows.dvc_stage
NAME` calls the same functions for `dvc repro`; `dvc.yaml` is generated from `build_stages`, so
the two cannot drift.

A stage's code dependencies are the project files its module imports, followed through every
import (`stage_code`), so `dvc repro` reruns a stage whenever code it runs has changed, and
only then. Stage modules are imported when a stage runs, never here: a DVC process running a
data stage does not pay for TensorFlow or MLflow.
"""

from __future__ import annotations

import ast
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kerasflow.config import Params
from kerasflow.layout import Layout
from kerasflow.sources import source_of

if TYPE_CHECKING:
    from kerasflow.records import (
        Evaluation,
        PreprocessState,
        RawDatasetInfo,
        Registration,
        TrainingResult,
        ValidationReport,
    )

    # What a stage's `run` returns: its record (kerasflow/records.py); None from a training worker that is not
    # the chief (it records nothing).
    StageRecord = (
        RawDatasetInfo | ValidationReport | PreprocessState | TrainingResult | Evaluation | Registration | None
    )

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kerasflow", "tasks", "flows")
# Every stage runs through this entry point (and the stage list in this file).
ENTRY_POINT = "flows/dvc_stage.py"
# The stages that make the data a model trains on: a tuning study runs them once, not once per trial.
DATA_STAGES = ("ingest", "validate", "preprocess")


@dataclass(frozen=True)
class Context:
    """Where a pipeline run works: its layout, the project root (where mlflow.db lives), and
    the MLflow run when the caller opened one before the stages (the Prefect flow does)."""

    layout: Layout
    project_root: Path
    run_id: str | None = None


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, with what `dvc.yaml` declares for it."""

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    # Small files git keeps (not DVC's cache): reports, the recorded schema.
    git_outs: tuple[str, ...] = ()
    persist: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    # Files the stage reads that no import reaches (e.g. code logged with the model).
    files: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"flows.stages.{self.name}"

    @property
    def run(self) -> Callable[[Params, Context], StageRecord]:
        """The stage function, imported on first use (TensorFlow's native start-up chatter left out)."""
        from kerasflow.runtime import import_quietly

        return import_quietly(self.module).run

    @property
    def code(self) -> tuple[str, ...]:
        """The project files this stage runs: its module's imports, followed, plus the entry point's."""
        module_file = f"flows/stages/{self.name}.py"
        return tuple(sorted({*stage_code(module_file), *stage_code(ENTRY_POINT), *self.files}))


def build_stages(layout: Layout, params: Params | None = None) -> list[Stage]:
    """The stages in pipeline order, with paths relative to the layout root.

    With `params`, files they name (a data file to ingest, a backbone's weights) are
    dependencies too, where they lie inside the project.
    """
    path = layout.relative
    raw = (path(layout.raw_data), path(layout.raw_meta))
    data_files = data_dependencies(layout, params) if params is not None else {}
    return [
        Stage("ingest", ("seed", "ingest"), deps=data_files.get("ingest", ()), outs=raw),
        Stage(
            "validate",
            ("validate",),
            deps=raw,
            git_outs=(path(layout.validation_report),),
            persist=(path(layout.schema),),
        ),
        Stage(
            "preprocess",
            ("seed", "preprocess"),
            deps=(*raw, path(layout.validation_report)),
            outs=(path(layout.processed_dir),),
        ),
        Stage(
            "train",
            # The input layers' constants come fitted from preprocess: a model change never re-splits.
            ("seed", "model", "train"),
            deps=(path(layout.processed_dir), *data_files.get("train", ())),
            outs=(path(layout.models_dir),),
            git_outs=(path(layout.run_file), path(layout.model_summary), path(layout.history)),
            # The worker entry point that train.workers starts as processes (run by name, not imported).
            files=("kerasflow/pyfunc_model.py", "flows/train_worker.py"),
        ),
        Stage(
            "evaluate",
            # register.model_name: the champion it re-scores, and the plots' titles; train (its cross_fit): whether
            # the baseline learns from the validation rows too. (A change to train retrains, so evaluate runs anyway.)
            ("seed", "evaluate", "register.model_name", "train"),
            deps=(path(layout.processed_dir), path(layout.models_dir), path(layout.run_file), path(layout.history)),
            git_outs=(
                path(layout.predictions),
                path(layout.plots_dir / "training_curves.png"),
                path(layout.plots_dir / "slices.csv"),
                path(layout.plots_dir / "slices.png"),
            ),
            metrics=(path(layout.metrics),),
        ),
        Stage(
            "register",
            ("register",),
            deps=(path(layout.metrics), path(layout.run_file), path(layout.processed_dir)),
            git_outs=(path(layout.registration), path(layout.model_card)),
        ),
    ]


def data_dependencies(layout: Layout, params: Params) -> dict[str, tuple[str, ...]]:
    """Files params.yaml names that a stage reads, relative to the project (those outside it are left out)."""
    named: dict[str, list[str | None]] = {
        "ingest": [params.ingest.path if source_of(params.ingest).names_path else None],
        "train": [params.model.backbone.weights if params.model.backbone else None],
    }
    found: dict[str, tuple[str, ...]] = {}
    for stage, paths in named.items():
        inside = []
        for value in paths:
            if not value or value == "imagenet":
                continue
            resolved = Path(value).resolve()
            if resolved.is_relative_to(layout.root):
                inside.append(resolved.relative_to(layout.root).as_posix())
        found[stage] = tuple(inside)
    return found


@functools.cache
def stage_code(module_file: str) -> tuple[str, ...]:
    """`module_file` and every project file it imports, directly or not (paths relative to the project)."""
    seen: set[str] = set()
    pending = [module_file]
    while pending:
        current = pending.pop()
        if current in seen or not (PROJECT_ROOT / current).is_file():
            continue
        seen.add(current)
        pending.extend(_imported_files(current))
    return tuple(sorted(seen))


def _imported_files(module_file: str) -> list[str]:
    """The project files one module imports anywhere in its body (imports inside functions too)."""
    tree = ast.parse((PROJECT_ROOT / module_file).read_text(), module_file)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    files = []
    for name in names:
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
        for depth in range(1, len(parts) + 1):
            base = os.path.join(*parts[:depth])
            for candidate in (f"{base}.py", os.path.join(base, "__init__.py")):
                if (PROJECT_ROOT / candidate).is_file():
                    files.append(Path(candidate).as_posix())
    return files


def run_pipeline(params: Params, context: Context) -> dict[str, StageRecord]:
    """Every stage in order, in this process, without Prefect or DVC (for notebooks and tests)."""
    return {stage.name: stage.run(params, context) for stage in build_stages(context.layout)}
