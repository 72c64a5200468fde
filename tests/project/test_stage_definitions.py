"""One stage definition, two front ends: dvc.yaml and the Prefect flow cannot drift apart, and each
DVC stage declares all the code it runs, the files params.yaml names, and no tracking settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from flows.dvc_stage import render_dvc_yaml
from flows.stages import build_stages
from kerasflow.config import Params, load_params, parse_params, with_paths_from
from kerasflow.layout import Layout
from tests.conftest import REPO_ROOT

STAGES = ["ingest", "validate", "preprocess", "train", "evaluate", "register"]


def test_dvc_yaml_is_generated_from_the_stage_list():
    expected = render_dvc_yaml(build_stages(Layout(REPO_ROOT), load_params(REPO_ROOT / "params.yaml")))
    assert (REPO_ROOT / "dvc.yaml").read_text() == expected, (
        "dvc.yaml is out of date: run `python -m flows.dvc_stage --write-dvc-yaml`"
    )


def test_every_dvc_stage_runs_the_shared_entry_point_and_names_real_params():
    document = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    names = [stage.name for stage in build_stages(Layout(REPO_ROOT))]
    assert list(document["stages"]) == names == STAGES
    known = Params().to_dict()
    for name, stage in document["stages"].items():
        assert stage["cmd"] == f"python -m flows.dvc_stage {name}"
        for dep in stage["deps"]:
            if dep.endswith(".py"):
                assert (REPO_ROOT / dep).is_file(), dep
        for key in stage["params"]:
            node = known
            for part in key.split("."):
                assert part in node, f"stage {name} lists params key {key!r}, which params.yaml does not have"
                node = node[part]


def test_each_stage_consumes_only_what_an_earlier_stage_produces():
    produced: set[str] = set()
    for stage in build_stages(Layout(REPO_ROOT)):
        for dep in stage.deps:
            assert dep in produced, f"{stage.name} depends on {dep}, which no earlier stage outputs"
        produced.update(stage.outs, stage.git_outs, stage.persist, stage.metrics)


def test_tracking_settings_invalidate_no_stage():
    # Renaming the experiment or moving the store must not retrain the model.
    for stage in build_stages(Layout(REPO_ROOT)):
        assert not any(key.split(".")[0] == "tracking" for key in stage.params), stage.name


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_declares_every_project_file_it_loads(name):
    """What really gets imported, in a fresh process, is within what dvc.yaml declares (imports inside
    functions are followed too, so the declared set is the larger one)."""
    stage = next(stage for stage in build_stages(Layout(REPO_ROOT)) if stage.name == name)
    probe = (
        "import json, sys, pathlib\n"
        f"import flows.dvc_stage, {stage.module}\n"
        f"root = pathlib.Path({str(REPO_ROOT)!r})\n"
        "found = [pathlib.Path(m.__file__).resolve() for m in [*sys.modules.values()] if getattr(m, '__file__', 0)]\n"
        "ours = [f.relative_to(root) for f in found if f.is_relative_to(root)]\n"
        "print(json.dumps(sorted(str(f) for f in ours if f.parts[0] in ('kerasflow', 'tasks', 'flows'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert loaded - set(stage.code) == set(), f"{name} loads code that dvc.yaml does not list"
    assert f"flows/stages/{name}.py" in stage.code and "flows/stages/__init__.py" in stage.code


def test_code_used_only_from_train_onwards_is_not_a_dependency_of_the_data_stages():
    stages = {stage.name: stage for stage in build_stages(Layout(REPO_ROOT))}
    for module in ("kerasflow/tracking.py", "tasks/model.py", "kerasflow/pyfunc_model.py"):
        using = [name for name in STAGES if module in stages[name].code]
        assert using[0] == "train" and "ingest" not in using and "preprocess" not in using, (module, using)


def test_files_params_names_are_dependencies_of_the_stage_that_reads_them(tmp_path):
    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mobilenet.weights.h5").write_bytes(b"")
    tree = {
        "ingest": {"source": "file", "path": "data.csv", "image_shape": [32, 32, 3]},
        "model": {"backbone": {"name": "MobileNetV2", "weights": "weights/mobilenet.weights.h5"}},
    }
    # Relative paths are taken from the params file's folder, for the data and the weights alike.
    params = with_paths_from(parse_params(tree), tmp_path)
    assert params.model.backbone.weights == str(tmp_path / "weights" / "mobilenet.weights.h5")
    stages = {stage.name: stage for stage in build_stages(Layout(tmp_path), params)}
    assert "data.csv" in stages["ingest"].deps
    assert "weights/mobilenet.weights.h5" in stages["train"].deps
    imagenet = with_paths_from(
        parse_params({"model": {"backbone": {"name": "MobileNetV2", "weights": "imagenet"}}}), tmp_path
    )
    train = {stage.name: stage for stage in build_stages(Layout(tmp_path), imagenet)}["train"]
    assert not [dep for dep in train.deps if dep.endswith(".h5")]
