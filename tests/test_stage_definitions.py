"""One stage definition, two front ends: dvc.yaml and the Prefect flow cannot drift apart."""

from __future__ import annotations

import yaml

from flows.dvc_stage import render_dvc_yaml
from flows.stages import build_stages
from kerasflow.config import Params
from kerasflow.layout import Layout
from tests.conftest import REPO_ROOT


def test_dvc_yaml_is_generated_from_the_stage_list():
    expected = render_dvc_yaml(build_stages(Layout(REPO_ROOT)))
    assert (REPO_ROOT / "dvc.yaml").read_text() == expected, (
        "dvc.yaml is out of date: run `python -m flows.dvc_stage --write-dvc-yaml`"
    )


def test_every_dvc_stage_runs_the_shared_entry_point_and_names_real_params():
    document = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    names = [stage.name for stage in build_stages(Layout(REPO_ROOT))]
    assert list(document["stages"]) == names == ["ingest", "validate", "preprocess", "train", "evaluate", "register"]
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
