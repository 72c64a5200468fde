"""Each stage on its own, Kedro-style, on a tiny folder: the stage before it has run, this one runs alone, and what
it returns is its record and what it writes is what the stage map (README, `flows/stages/__init__.py`) and
`dvc.yaml` declare. Iris (150 rows) and a two-epoch linear model keep the six stages under a minute."""

from __future__ import annotations

import yaml

from flows.stages import Context, build_stages
from kerasflow.config import load_params
from kerasflow.layout import Layout
from kerasflow.records import (
    Evaluation,
    PreprocessState,
    RawDatasetInfo,
    Registration,
    TrainingResult,
    ValidationReport,
)

RECORDS = {
    "ingest": RawDatasetInfo,
    "validate": ValidationReport,
    "preprocess": PreprocessState,
    "train": TrainingResult,
    "evaluate": Evaluation,
    "register": Registration,
}


def test_each_stage_alone_returns_its_record_and_writes_what_it_declares(tmp_path, monkeypatch):
    from tests.conftest import use_store

    params = {
        "ingest": {"source": "sklearn", "dataset": "iris"},
        "model": {"layers": [], "optimizer": {"name": "adam", "learning_rate": 0.05}},
        "train": {"epochs": 2, "batch_size": 16, "early_stopping": {"enabled": False}},
        "register": {"model_name": "stages-iris", "thresholds": {}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    use_store(tmp_path / "mlflow.db")
    layout = Layout(tmp_path)
    loaded = load_params(tmp_path / "params.yaml")
    records = {}
    for stage in build_stages(layout):  # in order: each runs alone on what the stages before it wrote
        declared = [tmp_path / path for path in (*stage.outs, *stage.git_outs)]
        assert declared and not any(path.exists() for path in declared), f"{stage.name}'s outputs exist before it ran"
        records[stage.name] = stage.run(loaded, Context(layout, tmp_path))
        assert isinstance(records[stage.name], RECORDS[stage.name]), stage.name
        for path in declared:
            assert path.exists(), f"{stage.name} did not write {path.relative_to(tmp_path)}, which dvc.yaml declares"

    assert list(records) == list(RECORDS)  # the stage map's order
    assert records["ingest"].rows == 150 and records["ingest"].task == "classification"
    assert records["validate"].ok and sum(records["preprocess"].rows.values()) == 150
    assert records["train"].epochs_trained == 2
    assert records["evaluate"].test["accuracy"] > 1 / 3  # three balanced classes: chance is a third
    assert records["register"].version == "1" and records["register"].alias in ("champion", "challenger")


def test_cross_fitted_stages_pool_the_training_rows_for_the_model_the_threshold_and_the_baseline(tmp_path, monkeypatch):
    """train.cross_fit through the stages: the members learn from the training and validation rows pooled, the
    decision threshold is chosen on their out-of-fold outputs, and evaluate fits the baseline on the same rows."""
    import mlflow

    from flows.stages import evaluate
    from tests.conftest import use_store

    params = {
        "ingest": {"source": "sklearn", "dataset": "breast_cancer"},
        "model": {
            "layers": [{"type": "dense", "units": 8, "activation": "relu"}],
            "ensemble": 2,
            "decision_threshold": "auto",
            "optimizer": {"name": "adam", "learning_rate": 0.01},
        },  # fmt: skip
        "train": {"epochs": 10, "batch_size": 32, "cross_fit": True, "early_stopping": {"patience": 3}},
        "register": {"model_name": "stages-cancer", "thresholds": {}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    use_store(tmp_path / "mlflow.db")
    fitted_on = []
    original = evaluate.baseline_sample
    monkeypatch.setattr(
        evaluate, "baseline_sample", lambda train, *rest: fitted_on.append(len(train)) or original(train, *rest)
    )
    layout, loaded = Layout(tmp_path), load_params(tmp_path / "params.yaml")
    records = {stage.name: stage.run(loaded, Context(layout, tmp_path)) for stage in build_stages(layout)}

    rows = records["preprocess"].rows
    assert fitted_on == [rows["train"] + rows["val"]]  # not the training split alone
    history = (tmp_path / "reports" / "history.csv").read_text().splitlines()[0].split(",")
    assert "val_loss" in history and not [name for name in history if "member_" in name]
    run = mlflow.get_run(records["train"].run_id)
    assert run.data.params["train.cross_fit"] == "True"
    assert 0 < float(run.data.params["model.decision_threshold_chosen"]) < 1
    assert records["evaluate"].test["accuracy"] > 0.85  # the majority class is about 0.63
    assert records["train"].cross_fit_members == 2
    card = Layout(tmp_path).model_card.read_text()  # what a reviewer reads: how it learnt, from which rows
    pooled = f"{rows['train'] + rows['val']:,}"
    assert f"Cross-fitted: 2 members, each learnt from 1 of 2 folds of the {pooled} training and validation" in card
