"""Bad input, end to end through the DVC stage entry points.

Every case starts from a project that already has a champion, and must end with a
non-zero exit, a message naming the file / column / key / value and what was expected,
no new output where a later stage would pick it up, no MLflow run left RUNNING, and
the registry untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flows import dvc_stage
from flows.stages import build_stages
from kerasflow.layout import Layout
from tests.conftest import REPO_ROOT, use_store

pytestmark = pytest.mark.integration

STAGES = [stage.name for stage in build_stages(Layout(REPO_ROOT))]
MODEL = "kerasflow-digits-cnn"


def add_schema_column(project: Path, name: str) -> None:
    path = project / "data" / "schema.json"
    schema = json.loads(path.read_text())
    schema["columns"][name] = next(iter(schema["columns"].values()))
    path.write_text(json.dumps(schema))


def edit_params(project: Path, change: Callable[[dict], None]) -> None:
    tree = yaml.safe_load((project / "params.yaml").read_text())
    change(tree)
    (project / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def good_table(rows: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    frame["label"] = (frame["a"] > 0).astype(int)
    return frame


def use_file(project: Path, name: str, content: bytes | pd.DataFrame | None, **ingest) -> None:
    """Point ingest at a file of the project's (written here unless None); forget the digits schema."""
    path = project / name
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    elif content is not None:
        path.write_bytes(content)
    (project / "data" / "schema.json").unlink()
    edit_params(project, lambda tree: tree["ingest"].update(source="file", path=str(path), target="label", **ingest))


def table_with(change: Callable[[pd.DataFrame], pd.DataFrame], rows: int = 100) -> pd.DataFrame:
    return change(good_table(rows))


def set_cell(frame: pd.DataFrame, column: str, value) -> pd.DataFrame:
    frame = frame.astype({column: object}) if isinstance(value, str) else frame
    frame.loc[3, column] = value
    return frame


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (how to break the project, the stage that must stop, what the message must say)
    "missing file": (lambda p: use_file(p, "gone.csv", None), "ingest", "gone.csv: file not found"),
    "empty file": (lambda p: use_file(p, "empty.csv", b""), "ingest", "empty.csv: could not be read as csv"),
    "ragged row": (
        lambda p: use_file(p, "ragged.csv", b"a,b,c,label\n1,2,3,0\n4,5,6,1,7,8\n"),
        "ingest",
        "ragged.csv: could not be read as csv",
    ),
    "corrupt parquet": (
        lambda p: use_file(p, "broken.parquet", b"PAR1\x00\x01\x02not really parquet"),
        "ingest",
        "broken.parquet: could not be read as parquet",
    ),
    "binary file as csv": (
        lambda p: use_file(p, "binary.csv", bytes(range(256)) * 8),
        "ingest",
        "binary.csv: could not be read as csv",
    ),
    "missing target column": (
        lambda p: use_file(p, "t.csv", good_table().drop(columns="label")),
        "ingest",
        "target column 'label' not found",
    ),
    "target all NaN": (
        lambda p: use_file(p, "t.csv", table_with(lambda f: f.assign(label=np.nan))),
        "validate",
        "target column 'label' has 100 missing (NaN) value(s)",
    ),
    "NaN in a feature": (
        lambda p: use_file(p, "t.csv", table_with(lambda f: set_cell(f, "a", np.nan))),
        "validate",
        "column 'a' has 1 missing (NaN) value(s)",
    ),
    "infinity in a feature": (
        lambda p: use_file(p, "t.csv", table_with(lambda f: set_cell(f, "b", np.inf))),
        "validate",
        "column 'b' has 1 infinite value(s)",
    ),
    "string in a numeric column": (
        lambda p: use_file(p, "t.csv", table_with(lambda f: set_cell(f, "c", "twelve"))),
        "validate",
        "column 'c' must be numeric",
    ),
    "a column empty in every row": (
        lambda p: use_file(p, "t.csv", table_with(lambda f: f.assign(notes=np.nan))),
        "validate",
        "column 'notes' has 100 missing (NaN) value(s)",
    ),
    "a single class": (
        lambda p: use_file(p, "t.csv", table_with(lambda f: f.assign(label=1))),
        "validate",
        "target column 'label' has 1 class(es); classification needs at least 2",
    ),
    "fewer rows than validation requires": (
        lambda p: use_file(p, "t.csv", good_table(rows=8)),
        "validate",
        "only 8 rows; validate.min_rows requires at least 20",
    ),
    "fewer rows than the split needs": (
        lambda p: (
            use_file(p, "t.csv", table_with(lambda f: f.assign(label=[0, 1, 2] * 2), rows=6)),
            edit_params(p, lambda tree: tree["validate"].update(min_rows=5)),
        ),
        "preprocess",
        "2 rows of class 0 are too few to split into train / val / test",
    ),
    "images of the wrong shape": (
        lambda p: use_file(p, "t.csv", good_table(), image_shape=[8, 8]),
        "validate",
        "image_shape [8, 8, 1] needs 64 pixel columns, found 3",
    ),
    # The same source, a column fewer than its recorded schema (another source records its own schema).
    "schema drift": (
        lambda p: add_schema_column(p, "pixel_extra"),
        "validate",
        "column(s) missing compared with the recorded schema: ['pixel_extra']",
    ),
    "unknown params key": (
        lambda p: edit_params(p, lambda tree: tree["train"].update(epohcs=3)),
        "ingest",
        "train.epohcs: unknown key",
    ),
    "wrong params type": (
        lambda p: edit_params(p, lambda tree: tree["train"].update(batch_size="large")),
        "ingest",
        "train.batch_size: Input should be a valid integer",
    ),
    "zero epochs": (
        lambda p: edit_params(p, lambda tree: tree["train"].update(epochs=0)),
        "ingest",
        "train.epochs: Input should be greater than 0",
    ),
    "negative batch size": (
        lambda p: edit_params(p, lambda tree: tree["train"].update(batch_size=-8)),
        "ingest",
        "train.batch_size: Input should be greater than 0",
    ),
    "unknown optimizer": (
        lambda p: edit_params(p, lambda tree: tree["model"]["optimizer"].update(name="adamw9")),
        "ingest",
        "model.optimizer.name: Input should be 'sgd', 'adam', 'adamw', 'rmsprop', 'adagrad' or 'adadelta'",
    ),
    "unknown loss": (
        lambda p: edit_params(p, lambda tree: tree["model"].update(loss="hinge_of_doom")),
        "ingest",  # the model is checked before any stage runs
        "model.loss: Keras does not know 'hinge_of_doom'",
    ),
    "unknown activation": (
        lambda p: edit_params(p, lambda tree: tree["model"]["layers"][0].update(activation="relux")),
        "ingest",
        "model.layers[0] (conv2d): Could not interpret activation function identifier: relux",
    ),
    "output size that does not match the labels": (
        lambda p: edit_params(p, lambda tree: tree["model"].update(loss="binary_crossentropy")),
        "train",
        "model.loss 'binary_crossentropy' needs 2 classes, but the data has 10",
    ),
    "invalid registered model name": (
        lambda p: edit_params(p, lambda tree: tree["register"].update(model_name="bad/name")),
        "ingest",
        "register.model_name: String should match pattern",
    ),
    "loss that becomes NaN": (
        lambda p: edit_params(
            p, lambda tree: tree["model"].update(optimizer={"name": "sgd", "learning_rate": 1e12, "momentum": 0.9})
        ),
        "train",
        "the loss became NaN or infinite",
    ),
}


@pytest.fixture(scope="module")
def base_project(tmp_path_factory):
    """A project after one good pipeline run: outputs in place and a champion in the registry."""
    project = tmp_path_factory.mktemp("base")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    params["register"].update(thresholds={}, require_beat_baseline=False)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for stage in STAGES:
            assert dvc_stage.main([stage]) == 0, stage
    return project


def fingerprint(project: Path) -> dict[str, str]:
    """Content hash of every pipeline output (data, models, reports)."""
    files = [
        path for folder in ("data", "models", "reports") for path in (project / folder).rglob("*") if path.is_file()
    ]
    return {str(path.relative_to(project)): hashlib.md5(path.read_bytes()).hexdigest() for path in files}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_stopped_cleanly(case, base_project, tmp_path, monkeypatch, caplog):
    breaker, failing_stage, message = CASES[case]
    project = tmp_path / "project"
    shutil.copytree(base_project, project)
    breaker(project)
    client = use_store(project / "mlflow.db")
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    champion_before = client.get_model_version_by_alias(MODEL, "champion").version
    before = fingerprint(project)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    codes = {}
    with caplog.at_level(logging.ERROR):
        for stage in STAGES:
            codes[stage] = dvc_stage.main([stage])
            if codes[stage] != 0:
                break
    stopped_at = next(stage for stage, code in codes.items() if code != 0)
    assert stopped_at == failing_stage, caplog.text
    assert message in caplog.text

    # Nothing new where a later stage would pick it up: the outputs of the failing stage and every
    # stage after it are as they were, except a validation report saying the data failed (which
    # preprocess refuses to go past). Stages before the failing one may have done their work.
    after = fingerprint(project)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    earlier = [stage for stage in build_stages(Layout(project)) if STAGES.index(stage.name) < STAGES.index(stopped_at)]
    earlier_outputs = tuple(out for stage in earlier for out in (*stage.outs, *stage.git_outs, *stage.persist))
    changed = {path for path in changed if not path.startswith(earlier_outputs)}
    allowed = {"reports/validation.json"} if failing_stage == "validate" else set()
    if failing_stage == "validate":
        assert '"ok": false' in (project / "reports/validation.json").read_text()
    assert changed <= allowed, changed

    client = use_store(project / "mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
    assert all(run.info.status != "RUNNING" for run in runs)
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion_before


def test_a_registration_that_fails_half_way_leaves_the_champion(base_project, tmp_path, monkeypatch, caplog):
    """The store goes away after the version is created: the alias stays where it was."""
    from mlflow.tracking import MlflowClient

    project = tmp_path / "project"
    shutil.copytree(base_project, project)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = use_store(project / "mlflow.db")
    champion = client.get_model_version_by_alias(MODEL, "champion").version

    def store_gone(self, *args, **kwargs):
        raise ConnectionError("the tracking store went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", store_gone)
    with caplog.at_level(logging.ERROR):
        assert dvc_stage.main(["register"]) == 1
    monkeypatch.undo()
    assert "the tracking store went away" in caplog.text
    client = use_store(project / "mlflow.db")
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion
    newest = max(client.search_model_versions(f"name='{MODEL}'"), key=lambda version: int(version.version))
    assert int(newest.version) > int(champion) and not newest.aliases  # created, but promoted nowhere
    runs = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
    assert all(run.info.status != "RUNNING" for run in runs)


def test_an_unreachable_tracking_server_stops_training_before_it_starts(base_project, tmp_path, monkeypatch, caplog):
    import time

    from tests.integration.servers import free_port

    project = tmp_path / "project"
    shutil.copytree(base_project, project)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = fingerprint(project)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert dvc_stage.main(["train"]) == 1
    assert time.monotonic() - started < 30  # no training time wasted
    assert f"MLflow tracking server {uri} is not reachable" in caplog.text
    assert fingerprint(project) == before
