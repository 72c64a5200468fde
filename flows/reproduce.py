"""Rebuild a registered version from its record alone, and say whether it matches.

    kerasflow reproduce models:/kerasflow-digits-cnn/3 [--tolerance 1e-6]

From the version's MLflow run, and nothing else:

1. the code: a clean `git worktree` of the run's commit in a temporary folder (a run recorded from a
   dirty tree is rebuilt with a warning: its code may have differed from the commit);
2. the data: the raw dataset by its DVC hash (the run's `data.md5`), through `dvc pull` of a `.dvc`
   file naming that hash, which reads the project's DVC cache, then its remote (kerasflow's own data
   cache, for runs that never went through DVC, last); its description and the schema it was
   validated against from the run's `lineage/` artifacts;
3. the params: the resolved `params.yaml` logged with the run.

The pipeline then runs from validate to evaluate in the worktree, with the worktree's own code and a
store of its own: the registry and the user's workspace are not touched. The rebuilt model's test
metrics and its predictions on the test split are compared with the recorded metrics and with the
registered model's predictions on the same rows; the verdict is tagged on the original run
(`reproduced`) and, as a flow (`reproduce-model`), published as a Prefect artifact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import flow

from kerasflow.errors import ExpectedError
from kerasflow.runtime import attach_to_prefect_logging, quiet_defaults

logger = logging.getLogger(__name__)

# On the CPU, with train.deterministic, the same code, data and params give the same weights bit for bit.
DEFAULT_TOLERANCE = 1e-6
REBUILD_STAGES = ("validate", "preprocess", "train", "evaluate")


class ReproduceError(ExpectedError, RuntimeError):
    """The record does not say enough to rebuild the version, or a part of it cannot be found."""


@dataclass
class Record:
    """What the version's run recorded: its commit, data hash, params and recorded test metrics."""

    model_uri: str
    name: str
    version: str
    run_id: str
    commit: str
    dirty: bool
    data_md5: str
    params_text: str
    lineage: dict[str, str]
    metrics: dict[str, float]


@dataclass
class Verdict:
    """Recorded against rebuilt: each test metric, and the predictions' largest difference."""

    metrics: dict[str, tuple[float, float]]
    prediction_difference: float
    tolerance: float
    warnings: list[str] = field(default_factory=list)

    @property
    def metric_difference(self) -> float:
        return max((abs(recorded - rebuilt) for recorded, rebuilt in self.metrics.values()), default=0.0)

    @property
    def matches(self) -> bool:
        return self.metric_difference <= self.tolerance and self.prediction_difference <= self.tolerance

    def table(self) -> str:
        lines = [f"{'metric':<12} {'recorded':>12} {'rebuilt':>12} {'difference':>12}"]
        for name, (recorded, rebuilt) in self.metrics.items():
            lines.append(f"{name:<12} {recorded:>12.6f} {rebuilt:>12.6f} {abs(recorded - rebuilt):>12.3g}")
        lines.append(
            f"{'predictions':<12} {'':>12} {'':>12} {self.prediction_difference:>12.3g}  (largest, test split)"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        verdict = "match" if self.matches else "MISMATCH"
        return (
            f"{verdict} within {self.tolerance:g}: metrics differ by at most {self.metric_difference:.3g}, "
            f"predictions by at most {self.prediction_difference:.3g}"
        )


def read_record(model_uri: str) -> Record:
    """The version's run and what it recorded; a record that lacks a part is a ReproduceError naming it."""
    from kerasflow import tracking

    check_version_uri(model_uri)
    try:
        name, version, run_id = tracking.registered_identity(model_uri, model_uri)
    except tracking.ModelNotFound as error:
        raise ReproduceError(str(error)) from None
    tags, recorded = tracking.run_record(run_id)
    missing = [tag for tag in ("mlflow.source.git.commit", "data.md5") if not tags.get(tag)]
    if missing:
        raise ReproduceError(f"run {run_id} of {model_uri} does not record {missing}: it cannot be rebuilt")
    with tempfile.TemporaryDirectory() as folder:
        try:
            params_text = tracking.download_run_file(run_id, "params.yaml", Path(folder)).read_text()
            lineage_dir = tracking.download_run_file(run_id, "lineage", Path(folder))
        except OSError as error:
            raise ReproduceError(
                f"run {run_id} of {model_uri} has no params.yaml or lineage/ artifact ({error}); "
                "runs record them since kerasflow tracks lineage"
            ) from None
        lineage = {path.name: path.read_text() for path in lineage_dir.iterdir()}
    if "dataset.json" not in lineage:
        raise ReproduceError(f"run {run_id} has no lineage/dataset.json: the raw data's description")
    metrics = {key.removeprefix("test_"): value for key, value in recorded.items() if key.startswith("test_")}
    return Record(
        model_uri=model_uri,
        name=name,
        version=version,
        run_id=run_id,
        commit=tags["mlflow.source.git.commit"],
        dirty=tags.get("git.dirty") == "True",
        data_md5=tags["data.md5"],
        params_text=params_text,
        lineage=lineage,
        metrics=metrics,
    )


def check_version_uri(model_uri: str) -> None:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS`, or a ReproduceError saying so."""
    rest = model_uri.removeprefix("models:/")
    name, _, version = rest.rpartition("/")
    if not model_uri.startswith("models:/") or ("@" not in rest and not (name and version.isdigit())):
        raise ReproduceError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")


@contextlib.contextmanager
def worktree(project: Path, commit: str) -> Iterator[Path]:
    """A clean checkout of `commit` in a temporary folder (a git worktree of the project), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="kerasflow-reproduce-"))
    checkout = folder / "code"
    git = ["git", "-C", str(project)]
    result = subprocess.run(
        [*git, "worktree", "add", "--detach", str(checkout), commit], capture_output=True, text=True
    )
    if result.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ReproduceError(f"commit {commit} cannot be checked out from {project}: {result.stderr.strip()}")
    try:
        yield checkout
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(checkout)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fetch_data(record: Record, project: Path, checkout: Path) -> None:
    """The raw dataset by its hash into the checkout's data/raw, with its recorded description and schema.

    Looked up by hash through DVC's own API in the project's cache (wherever `cache.dir` puts it), then in its
    default remote; nothing is written into the project or the checkout for DVC to track (data/ is git-ignored
    there). kerasflow's own content cache (`.kerasflow/cache/ingest-*`, where Prefect runs keep the data) is the
    last place looked: a file there is used only if its md5 is the hash.
    """
    from kerasflow.io import file_md5
    from kerasflow.layout import Layout

    layout = Layout(checkout)
    layout.raw_dir.mkdir(parents=True, exist_ok=True)
    target = layout.raw_data
    tried: list[str] = []
    if not from_dvc(record.data_md5, project, target, tried):
        for candidate in sorted((project / ".kerasflow" / "cache").glob("ingest-*/dataset.parquet")):
            if file_md5(candidate) == record.data_md5:
                shutil.copy(candidate, target)
                break
        else:
            tried.append(f"kerasflow's data cache {project / '.kerasflow' / 'cache'}")
            raise ReproduceError(f"the raw dataset with md5 {record.data_md5} is in none of: {'; '.join(tried)}")
    layout.raw_meta.write_text(record.lineage["dataset.json"])
    if "schema.json" in record.lineage:
        layout.schema.write_text(record.lineage["schema.json"])


def from_dvc(md5: str, project: Path, target: Path, tried: list[str]) -> bool:
    """Copy the object of hash `md5` from the project's DVC cache, or its default remote, to `target`."""
    from kerasflow.io import file_md5

    if not (project / ".dvc").is_dir():
        tried.append(f"no DVC cache ({project} is not a DVC project)")
        return False
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        places = [("the DVC cache", lambda: repo.cache.local), ("the DVC remote", lambda: repo.cloud.get_remote_odb())]
        for name, database in places:
            try:
                odb = database()
                path = odb.oid_to_path(md5)
                if odb.fs.exists(path):
                    odb.fs.get_file(path, str(target))
                    if file_md5(target) == md5:
                        return True
                    target.unlink(missing_ok=True)
                tried.append(f"{name} {odb.path}")
            except DvcException as error:  # no remote configured, or one that cannot be reached
                tried.append(f"{name} ({error})")
    return False


def rebuild(record: Record, checkout: Path) -> Path:
    """Run validate, preprocess, train and evaluate in the checkout with its own code and a store of its own."""
    params = yaml.safe_load(record.params_text)
    params.setdefault("tracking", {})["tracking_uri"] = "sqlite:///rebuild.db"
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    for stage in REBUILD_STAGES:
        logger.info("rebuilding: %s", stage)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "flows.dvc_stage", stage], cwd=checkout, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ReproduceError(
                f"stage {stage} failed in the rebuild at {record.commit[:10]}:\n{result.stderr[-3000:]}"
            )
        logger.info("rebuilding: %s done in %.1f s", stage, time.perf_counter() - started)
    return checkout


def compare(record: Record, checkout: Path, tolerance: float) -> Verdict:
    """Recorded test metrics against rebuilt ones; the registered model's predictions on the rebuilt test split
    against the rebuilt model's."""
    import numpy as np

    from kerasflow import tracking
    from kerasflow.io import read_json
    from kerasflow.runtime import import_quietly

    import_quietly("keras")  # the models below load TensorFlow: its native start-up lines stay out of the terminal
    from kerasflow.layout import Layout
    from kerasflow.model_interface import ModelConfig, model_outputs
    from kerasflow.records import Evaluation, TrainingResult
    from tasks.features import as_signature

    layout = Layout(checkout)
    rebuilt_metrics = Evaluation.read(layout.metrics).test
    metrics = {
        name: (record.metrics[name], float(rebuilt_metrics[name])) for name in rebuilt_metrics if name in record.metrics
    }
    model_id = TrainingResult.read(layout.run_file).model_id
    config = ModelConfig.from_dict(read_json(layout.model_config))
    test = rebuilt_test_split(layout.processed_dir)
    # The rebuild's store is a local one in the checkout: its logged model's files are under mlartifacts/.
    (rebuilt_files,) = {path.parent for path in checkout.glob(f"mlartifacts/**/{model_id}/**/MLmodel")}
    registered, rebuilt = tracking.load_model(record.model_uri), tracking.load_model(str(rebuilt_files))
    difference = 0.0
    for x, _ in test.batches(1 << 16):  # the test rows streamed through both models
        if config.inputs.kind != "image":
            x = as_signature(x, config.inputs)  # an integer column of the CSV as the signature's double
        ours, theirs = model_outputs(registered.predict(x), config), model_outputs(rebuilt.predict(x), config)
        difference = max(difference, float(np.max(np.abs(ours - theirs))) if len(ours) else 0.0)
    return Verdict(metrics, difference, tolerance)


def rebuilt_test_split(folder: Path) -> Any:
    """The rebuild's test split: streamed from its file, or (a commit from before the splits were single Parquet
    files) its features and labels read whole."""
    import numpy as np
    import pandas as pd

    from tasks.preprocess import Split, split_source

    if (folder / "test.parquet").is_file():
        return split_source(folder, "test")
    table = folder / "x_test.parquet"
    x = pd.read_parquet(table) if table.is_file() else np.load(folder / "x_test.npy")
    return LegacySplit(Split(x, np.load(folder / "y_test.npy")))


@dataclass(frozen=True)
class LegacySplit:
    """A split held in memory, read as one batch."""

    split: Any

    def batches(self, rows: int) -> Iterator[tuple[Any, Any]]:
        yield self.split.x, self.split.y


def reproduce(model_uri: str, project: Path, tolerance: float = DEFAULT_TOLERANCE) -> Verdict:
    """Rebuild `model_uri` from its record in a temporary worktree of `project`; compare; tag the original run."""
    from kerasflow import tracking

    record = read_record(model_uri)
    warnings = []
    if record.dirty:
        warnings.append(
            f"run {record.run_id} was recorded from a work tree with uncommitted changes: the code rebuilt is commit "
            f"{record.commit[:10]}, which may differ from the code that ran"
        )
        logger.warning("%s", warnings[-1])
    logger.info(
        "rebuilding %s (run %s) at commit %s, data md5 %s",
        model_uri,
        record.run_id,
        record.commit[:10],
        record.data_md5,
    )
    with worktree(project, record.commit) as checkout:
        fetch_data(record, project, checkout)
        rebuild(record, checkout)
        verdict = compare(record, checkout, tolerance)
    verdict.warnings = warnings
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    tracking.set_tags(record.run_id, {"reproduced": f"{stamp}: {verdict.summary()}"})
    return verdict


def reproduce_in_project(
    model_uri: str, params_path: str = "params.yaml", tolerance: float = DEFAULT_TOLERANCE
) -> Verdict:
    """`reproduce` against the project of `params_path`: its tracking store, its git repository and DVC cache."""
    from kerasflow import tracking
    from kerasflow.config import load_params

    params = load_params(params_path)
    project = Path(params_path).resolve().parent
    tracking.configure(params.tracking, project)
    return reproduce(model_uri, project, tolerance)


@flow(name="reproduce-model")
def reproduce_model(
    model_uri: str, params_path: str = "params.yaml", tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, Any]:
    """Rebuild a registered version from its record and publish the verdict as a Prefect artifact.

    Args:
        model_uri: models:/NAME/VERSION or models:/NAME@ALIAS.
        params_path: the project's params file (its tracking store, git repository and DVC cache).
        tolerance: the largest difference in a test metric or a prediction that still counts as a match.
    """
    from prefect.artifacts import create_markdown_artifact

    quiet_defaults()
    attach_to_prefect_logging()
    verdict = reproduce_in_project(model_uri, params_path, tolerance)
    create_markdown_artifact(
        markdown=f"# Reproduced `{model_uri}`\n\n**{verdict.summary()}**\n\n```\n{verdict.table()}\n```\n"
        + "".join(f"\n> {warning}\n" for warning in verdict.warnings),
        key="reproduction",
        description=f"kerasflow reproduce {model_uri}",
    )
    if not verdict.matches:
        raise ReproduceError(f"{model_uri} did not reproduce: {verdict.summary()}")
    return {"matches": verdict.matches, "summary": verdict.summary(), "metrics": verdict.metrics}
