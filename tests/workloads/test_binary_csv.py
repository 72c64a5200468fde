"""Binary classification from a CSV with a yes/no target: sigmoid output, class weights, a decision
threshold from params, ROC and precision-recall curves, and labels (not indices) from the served model."""

from __future__ import annotations

import numpy as np
import pytest

from flows.stages import Context, run_pipeline
from kerasflow import samples
from kerasflow.config import load_params
from kerasflow.layout import Layout
from tests.conftest import use_store
from tests.workloads.test_workloads import copy_example

# Each runs the whole pipeline through its stages: an end-to-end test, not a unit's.
pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_yes_no_csv_with_class_weights_and_a_decision_threshold(tmp_path, monkeypatch):
    import mlflow

    from tasks.features import raw_example
    from tasks.preprocess import read_split, read_state

    project = copy_example("churn_binary", tmp_path)
    samples.churn().to_csv(project / "churn.csv", index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = use_store(tmp_path / "mlflow.db")
    params = load_params(project / "params.yaml", {"model.decision_threshold": 0.7, "train.epochs": 40})
    layout = Layout(project)

    results = run_pipeline(params, Context(layout, project))

    evaluation = results["evaluate"]
    assert evaluation.test["roc_auc"] >= 0.75 and evaluation.decision_threshold == 0.7
    model = mlflow.pyfunc.load_model(f"models:/{params.register_.model_name}@champion")
    test_rows = read_split(layout.processed_dir, "test")
    served = model.predict(raw_example(test_rows.x, read_state(layout.processed_dir).inputs, rows=len(test_rows)))
    assert set(served["label"]) <= {"no", "yes"} and list(served.columns) == [
        "label",
        "probability_no",
        "probability_yes",
    ]
    # The served labels follow the threshold in params, not 0.5.
    np.testing.assert_array_equal(served["label"] == "yes", served["probability_yes"] >= 0.7)
    assert ((served["probability_yes"] >= 0.5) & (served["probability_yes"] < 0.7)).any()
    artifacts = {item.path for item in client.list_artifacts(results["train"].run_id, "plots")}
    assert {"plots/roc_curve.png", "plots/precision_recall_curve.png"} <= artifacts

    # The class weights did something: the same run without them finds fewer of the minority "yes" rows.
    plain = load_params(
        project / "params.yaml", {"model.decision_threshold": 0.7, "train.epochs": 40, "train.class_weight": None}
    )
    unweighted = run_pipeline(plain, Context(Layout(tmp_path / "unweighted"), project))["evaluate"]
    positives = (test_rows.y == 1).sum()
    assert 0 < positives < len(test_rows) / 2  # "yes" is the minority
    assert evaluation.test["recall"] > unweighted.test["recall"] + 0.05, (evaluation, unweighted)
