"""Every offline example becomes the project's workload with `kerasflow example NAME`, and `dvc repro` runs it:
one after another, in the same git + DVC clone, as a user switching workloads would."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.servers import clone_project, project_env, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Examples whose data ships in the repository or with scikit-learn (the others download theirs).
OFFLINE = [
    "digits_cnn",
    "iris_mlp",
    "breast_cancer_mlp",
    "diabetes_mlp",
    "house_prices",
    "house_prices_two_branch",
    "churn_binary",
    "linear_regression",
    "text_lstm",
    "image_folder_cnn",
    # Studies (`kerasflow tune`); under `dvc repro` they train their base configuration.
    "optimizer_comparison",
    "house_prices_tuning",
]
DOWNLOADS = {"mnist_cnn", "fashion_mnist_cnn", "boston_housing_mlp", "imdb_lstm", "transfer_learning"}


def test_the_offline_list_is_every_example_that_needs_no_download():
    shipped = {path.parent.name for path in (REPO_ROOT / "examples").glob("*/params.yaml")}
    assert set(OFFLINE) | DOWNLOADS == shipped


# One example per kind of dvc.yaml a workload makes: a built-in source with a study's base configuration, a CSV
# file with numeric and categorical columns, a text column, an image folder (its folder a dependency). The others
# differ from these only in params, not in what DVC sees; tests/workloads trains each of them through the stages.
# digits_cnn is the project's own params.yaml, which tests/integration/test_dvc_pipeline.py runs under DVC.
UNDER_DVC = ["optimizer_comparison", "house_prices", "text_lstm", "image_folder_cnn"]


def test_one_example_of_each_kind_through_kerasflow_example_then_dvc_repro(tmp_path_factory):
    # The examples' data ships with them (their synthetic sets written by `python -m kerasflow.samples examples`).
    assert set(UNDER_DVC) <= set(OFFLINE)
    root = tmp_path_factory.mktemp("p")
    env = project_env(root)
    clone_project(root, env)

    for name in UNDER_DVC:
        # Two epochs: this test shows each workload runs under DVC; tests/workloads shows each one learns.
        run(["kerasflow", "example", name, "--set", "train.epochs=2"], root, env)
        params = yaml.safe_load((root / "params.yaml").read_text())
        assert {"seed", "ingest", "validate", "preprocess", "model", "train", "evaluate", "register"} <= set(params)
        result = run(["dvc", "repro"], root, env)
        assert "Running stage 'register'" in result.stdout, (name, result.stdout[-2000:])
        registration = json.loads((root / "reports" / "registration.json").read_text())
        assert registration["model_name"] == params["register"]["model_name"], name
        shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
        workspace = json.dumps(shown)
        primary = json.loads((root / "reports" / "metrics.json").read_text())["primary_metric"]
        assert f'"{primary}"' in workspace and '"best_epoch"' in workspace, name  # dvc exp show has the key metrics
