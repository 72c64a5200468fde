"""A bad params.yaml fails at the entry point, before any stage does work, with the key named."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import yaml

from flows import cli, dvc_stage
from kerasflow.config import ConfigError
from kerasflow.overrides import parse_assignments
from tests.conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(project, change):
    tree = yaml.safe_load((project / "params.yaml").read_text())
    change(tree)
    (project / "params.yaml").write_text(yaml.safe_dump(tree))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda tree: tree["train"].update(epohcs=3), "train.epohcs: unknown key"),
        (lambda tree: tree["train"].update(batch_size="big"), "train.batch_size"),
        (lambda tree: tree["model"]["optimizer"].update(name="adamax2"), "model.optimizer.name"),
    ],
)
@pytest.mark.parametrize("stage", ["ingest", "train", "register"])
def test_every_dvc_stage_refuses_bad_params_before_work(project, caplog, change, expected, stage):
    write_params(project, change)
    with caplog.at_level(logging.ERROR):
        assert dvc_stage.main([stage]) == 2
    assert expected in caplog.text
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]


def test_cli_refuses_a_bad_override_before_starting_prefect(project, capsys):
    assert cli.main(["run", "--set", "train.epochs=0"]) == 2
    assert "train.epochs: Input should be greater than 0" in capsys.readouterr().err
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]


def test_cli_parses_override_values_as_yaml():
    assert parse_assignments(["train.epochs=5", "model.optimizer.name=sgd", "ingest.image_shape=[8, 8]"]) == {
        "train.epochs": 5,
        "model.optimizer.name": "sgd",
        "ingest.image_shape": [8, 8],
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["train.epochs"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.layers=[{type: dense", "--set 'model.layers=[{type: dense': the value is not valid YAML"),
        ("train.epochs", "--set expects KEY=VALUE"),
        ("train.batch_size=100000000", "train.batch_size: Input should be less than or equal to 16777216"),
    ],
)
def test_a_malformed_or_out_of_range_override_is_one_line_and_exit_2(project, capsys, override, expected):
    assert cli.main(["run", "--set", override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.startswith("kerasflow: ")
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]


def test_unknown_stage_is_a_usage_error(project, capsys):
    with pytest.raises(SystemExit) as raised:
        dvc_stage.main(["deploy"])
    assert raised.value.code == 2  # argparse's usage error
    assert (
        "stage must be one of ['ingest', 'validate', 'preprocess', 'train', 'evaluate', 'register'], got 'deploy'"
        in (capsys.readouterr().err)
    )


def test_a_dvc_stage_is_refused_by_name_while_a_run_writes_the_same_folder(project):
    import subprocess
    import sys

    from kerasflow.layout import run_folder_lock

    def stage():
        command = [sys.executable, "-m", "flows.dvc_stage", "ingest"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    with run_folder_lock(project):  # as `kerasflow run` holds it for the whole run, in this folder
        refused = stage()
    assert refused.returncode == 1
    assert "stage ingest not started" in refused.stderr
    assert "another run (a `kerasflow run`, or a stage of `dvc repro`) is writing its models/" in refused.stderr
    assert not (project / "data").exists()  # nothing written
    with run_folder_lock(project / "runs" / "flow-run-1"):  # an --isolate run has a folder of its own
        started = stage()
    assert started.returncode == 0, started.stderr[-2000:]
    assert (project / "data" / "raw" / "dataset.parquet").is_file()


def test_the_flow_module_does_not_import_the_command_line_and_loads_once():
    import subprocess
    import sys

    probe = "import sys, flows.training; print('flows.cli' in sys.modules, 'mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    # No cycle, and importing the flow (as a Prefect worker does) touches no MLflow before the quiet environment.
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_evaluate_and_register_do_not_import_tensorflow():
    import subprocess
    import sys

    # Under `dvc repro` each stage is a process: evaluate weighs the test outputs train scored, and register
    # records; neither pays TensorFlow's import (about 7 s) unless a champion is re-scored.
    probe = "import sys, flows.stages.evaluate, flows.stages.register; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False"], result.stderr[-2000:]


def test_the_quiet_environment_is_defined_once():
    import subprocess
    import sys

    from kerasflow.runtime import QUIET_ENVIRONMENT

    exported = subprocess.run(
        [sys.executable, "-m", "kerasflow.runtime"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert exported.splitlines() == [f"export {name}={value}" for name, value in QUIET_ENVIRONMENT.items()]
    # The shell script and the deployment take it from there; neither repeats a value.
    env_script = (REPO_ROOT / "scripts" / "env.sh").read_text()
    assert "python -m kerasflow.runtime" in env_script
    deployments = (REPO_ROOT / "prefect.yaml").read_text() + env_script
    assert not [name for name in QUIET_ENVIRONMENT if name in deployments]


def test_a_queued_dvc_experiment_records_into_the_project_not_its_copy(tmp_path, monkeypatch):
    from flows.dvc_stage import shared_root

    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert shared_root(copy) == tmp_path.resolve()
    assert shared_root(tmp_path) == tmp_path  # `dvc repro` and `dvc exp run` in the workspace
    monkeypatch.delenv("DVC_ROOT")
    assert shared_root(copy) == copy


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.layers.0.unitz=3", "model.layers[0] (conv2d): unknown argument 'unitz'"),
        ("model.layers.5.units=abc", "model.layers[5] (dense): Received an invalid value for `units`"),
        ("model.layers.0.activation=relux", "model.layers[0] (conv2d)"),
    ],
)
def test_every_layer_argument_is_checked_before_any_stage_runs(project, capsys, override, expected):
    """Layer arguments were once checked only inside train, after three stages ran and an MLflow run was opened."""
    assert cli.main(["run", "--set", override]) == 2
    assert expected in capsys.readouterr().err
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]  # no stage ran, no MLflow store


def test_the_first_dvc_stage_checks_the_layers_too(project, caplog):
    write_params(project, lambda tree: tree["model"]["layers"][0].update(filterz=3))
    with caplog.at_level(logging.ERROR):
        assert dvc_stage.main(["ingest"]) == 2
    assert "model.layers[0] (conv2d): unknown argument 'filterz' (did you mean 'filters'?)" in caplog.text
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]


def test_a_layer_check_that_passed_is_not_paid_again_and_a_changed_spec_is_checked(project, monkeypatch, caplog):
    """The check imports TensorFlow (5 to 8 s of a forced `dvc repro`): once per model spec, then a marker."""
    from kerasflow.config import load_params
    from tasks import model

    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(model, "check_spec", lambda spec: calls.append(spec))
        loaded = load_params(project / "params.yaml")
        dvc_stage.check_model_once(loaded, project)
        dvc_stage.check_model_once(loaded, project)
        assert len(calls) == 1 and len(list((project / ".kerasflow" / "checked").iterdir())) == 1
        write_params(project, lambda tree: tree["model"]["layers"][0].update(filters=8))
        dvc_stage.check_model_once(load_params(project / "params.yaml"), project)
        assert len(calls) == 2  # another spec: checked again
    write_params(project, lambda tree: tree["model"]["layers"][0].update(filterz=3))
    with caplog.at_level(logging.ERROR):
        assert dvc_stage.main(["ingest"]) == 2  # a failing spec leaves no marker: refused every time
        assert dvc_stage.main(["ingest"]) == 2
    assert len(list((project / ".kerasflow" / "checked").iterdir())) == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError("data/raw/dataset.parquet: not found"), "failed: data/raw/dataset.parquet: not found"),
        (TypeError("Can not safely convert int64 to float64"), "failed: TypeError: Can not safely convert int64"),
    ],
)
def test_a_rebuild_that_fails_is_exit_3_never_the_mismatch_code(project, capsys, monkeypatch, error, expected):
    import flows.reproduce

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(flows.reproduce, "reproduce_in_project", fail)
    assert cli.main(["reproduce", "models:/digits/1"]) == cli.REBUILD_FAILED == 3
    err = capsys.readouterr().err
    assert err.startswith("kerasflow: the rebuild of models:/digits/1 ") and expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
