"""The registration gate: thresholds, baseline, champion and smoke test, each explained."""

from __future__ import annotations

import numpy as np
import pytest

from kerasflow.config import RegisterParams
from kerasflow.records import CHALLENGER, CHAMPION, ChampionScore
from kerasflow.tracking import apply_decision, register_version
from tasks.register import decide, verify_registered_files

GOOD = {"accuracy": 0.98, "f1": 0.97}
BASELINE = {"accuracy": 0.96, "f1": 0.95}
PARAMS = RegisterParams(model_name="m", thresholds={"accuracy": 0.97})


def test_a_candidate_that_passes_everything_is_promoted():
    decision = decide(GOOD, BASELINE, None, "accuracy", PARAMS)
    assert decision.promote and decision.alias == CHAMPION
    assert "there is no current champion" in decision.reasons


@pytest.mark.parametrize(
    ("candidate", "baseline", "champion", "smoke_ok", "failed_check"),
    [
        ({"accuracy": 0.965, "f1": 0.9}, {"accuracy": 0.9}, None, True, "threshold.accuracy"),
        (GOOD, {"accuracy": 0.985}, None, True, "beats_baseline"),
        (GOOD, BASELINE, ChampionScore("3", test={"accuracy": 0.99}), True, "beats_champion"),
        (GOOD, BASELINE, None, False, "smoke_test"),
    ],
)
def test_each_gate_can_hold_a_candidate_back(candidate, baseline, champion, smoke_ok, failed_check):
    decision = decide(candidate, baseline, champion, "accuracy", PARAMS, smoke_ok)
    assert not decision.promote and decision.alias == CHALLENGER
    # Exactly the check the case was built to fail holds it back, and its reason says so.
    assert [name for name, ok in decision.checks.items() if not ok] == [failed_check]


def test_the_reference_is_reported_and_gates_only_when_asked():
    reference = {"name": "HistGradientBoosting", "accuracy": 0.985, "f1": 0.98}
    # Off by default: a candidate behind gradient boosting still becomes champion.
    assert decide(GOOD, BASELINE, None, "accuracy", PARAMS, reference_scores=reference).promote
    strict = RegisterParams(model_name="m", thresholds={"accuracy": 0.97}, require_beat_reference=True)
    held = decide(GOOD, BASELINE, None, "accuracy", strict, reference_scores=reference)
    assert not held.promote and [name for name, ok in held.checks.items() if not ok] == ["beats_reference"]
    assert "accuracy 0.9800 does not beat the reference's (HistGradientBoosting) 0.9850" in held.reasons
    assert decide(GOOD, BASELINE, None, "accuracy", strict, reference_scores={"accuracy": 0.97}).promote
    # Asked for, but there is none (images, or evaluate.reference off): it holds the candidate back, saying so.
    missing = decide(GOOD, BASELINE, None, "accuracy", strict)
    assert not missing.promote and any("no reference score" in reason for reason in missing.reasons)


def test_a_dvc_experiment_never_moves_the_champion_and_says_how_to_promote_it():
    decision = decide(GOOD, BASELINE, None, "accuracy", PARAMS, dvc_experiment="bushy-lynx")
    assert not decision.promote and decision.alias == CHALLENGER
    assert [name for name, ok in decision.checks.items() if not ok] == ["not_a_dvc_experiment"]
    assert any(
        "`dvc exp apply bushy-lynx` then `dvc repro --force --single-item register`" in r for r in decision.reasons
    )


def test_a_tie_with_the_champion_keeps_the_champion():
    decision = decide(GOOD, BASELINE, ChampionScore("3", test={"accuracy": 0.98}), "accuracy", PARAMS)
    assert not decision.promote and decision.checks["beats_champion"] is False
    assert (
        "accuracy 0.9800 ties with the champion's (version 3) 0.9800 on the same test rows; the champion stays"
        in decision.reasons
    )


def gate_on_rows(candidate_right: np.ndarray, champion_right: np.ndarray, params: RegisterParams, slices=()):
    """decide() on a test split where each model is right on the rows given (two classes), with the evidence
    evaluate gathers: the paired bootstrap and the slices."""
    from kerasflow.records import Evaluation
    from tasks.evidence import Evidence, Scored

    y = np.arange(len(candidate_right)) % 2
    candidate = Scored("the candidate", np.where(candidate_right, y, 1 - y).astype("float32"))
    champion = Scored("the champion (version 3)", np.where(champion_right, y, 1 - y).astype("float32"))
    rows = Evidence.draw(y, "accuracy", "classification", 2, seed=0)
    labels = {"region": np.asarray(slices)} if len(slices) else {}
    sliced = rows.slices(candidate, labels, champion=champion)
    versus = rows.comparison(candidate, champion)
    score = ChampionScore("3", test={"accuracy": float(champion_right.mean())}, comparison=versus)
    test = {"accuracy": float(candidate_right.mean())}
    evidence = Evaluation("classification", "accuracy", test, {"accuracy": 0.5}, 100, True, len(y), slices=sliced)
    return decide(test, {"accuracy": 0.5}, score, "accuracy", params, evidence=evidence)


def test_one_row_better_on_twenty_does_not_take_champion_at_the_default_confidence():
    champion_right = np.array([True] * 16 + [False] * 4)
    candidate_right = champion_right.copy()
    candidate_right[16] = True  # one row more: 0.85 against 0.80
    decision = gate_on_rows(candidate_right, champion_right, RegisterParams(model_name="m"))
    assert not decision.promote and not decision.checks["beats_champion"]
    (reason,) = [reason for reason in decision.reasons if "champion's" in reason]
    assert "accuracy 0.8500 is better than, but not surely better than, the champion's (version 3) 0.8000" in reason
    assert "below register.min_confidence 0.9" in reason and "the champion stays" in reason
    assert "on 20 test rows, one row is 5.0 points of accuracy" in reason
    # The probability it reports is the bootstrap's: the one row is drawn in about 1 - (19/20)^20 = 64 % of them.
    share = int(reason.split("better in ")[1].split(" %")[0])
    assert 55 <= share <= 72
    # With no confidence asked for, the same evidence moves it.
    assert gate_on_rows(candidate_right, champion_right, RegisterParams(model_name="m", min_confidence=0.0)).promote


def test_a_clearly_better_candidate_takes_champion():
    champion_right = np.array([True] * 12 + [False] * 8)
    candidate_right = np.array([True] * 19 + [False])
    decision = gate_on_rows(candidate_right, champion_right, RegisterParams(model_name="m"))
    assert decision.promote and decision.checks["beats_champion"]
    (reason,) = [reason for reason in decision.reasons if "champion's" in reason]
    assert "accuracy 0.9500 beats the champion's (version 3) 0.6000" in reason and "better in 100 %" in reason


def test_worse_on_one_slice_by_more_than_the_margin_stays_challenger_naming_the_slice():
    # 400 rows: better overall (+7 points), but on the 100 rows of region `north` 10 points worse.
    champion_right = np.array([True] * 280 + [False] * 120)
    candidate_right = champion_right.copy()
    candidate_right[280:318] = True  # +38 rows elsewhere
    candidate_right[0:10] = False  # -10 rows in north
    regions = np.array(["north"] * 100 + ["south"] * 300)
    decision = gate_on_rows(candidate_right, champion_right, RegisterParams(model_name="m"), regions)
    assert decision.checks["beats_champion"]
    assert not decision.promote and [name for name, ok in decision.checks.items() if not ok] == ["no_slice_regression"]
    assert any(
        "on slice region=north (100 rows) accuracy 0.9000 is 0.1000 worse than the champion's 1.0000, more than "
        "register.max_slice_regression 0.05" in reason
        for reason in decision.reasons
    )
    # A slice under register.min_slice_rows is reported, not gated.
    lenient = RegisterParams(model_name="m", min_slice_rows=101)
    assert gate_on_rows(candidate_right, champion_right, lenient, regions).promote


def test_a_champion_that_cannot_take_the_data_leaves_thresholds_and_baseline_to_judge():
    skipped = ChampionScore("3", skipped="the champion (version 3) cannot be scored here: it takes column(s) ['zip']")
    decision = decide(GOOD, BASELINE, skipped, "accuracy", PARAMS)
    assert decision.promote and decision.checks["beats_champion"]
    assert any("['zip']" in reason and "thresholds and the baseline alone" in reason for reason in decision.reasons)


def test_error_metrics_point_the_other_way():
    params = RegisterParams(model_name="m", thresholds={"rmse": 1.0})
    champion = ChampionScore("1", test={"rmse": 0.85})
    decision = decide({"rmse": 0.8, "r2": 0.5}, {"rmse": 0.9, "r2": 0.4}, champion, "rmse", params)
    assert decision.promote, decision.reasons
    assert not decide({"rmse": 1.2, "r2": 0.5}, {"rmse": 0.9, "r2": 0.4}, None, "rmse", params).promote


def test_threshold_on_a_metric_the_model_lacks_holds_it_back():
    decision = decide(GOOD, BASELINE, None, "accuracy", RegisterParams(model_name="m", thresholds={"r2": 0.5}))
    assert not decision.promote and "has no r2 metric" in decision.reasons[0]


def test_registry_round_trip_in_a_real_store(mlflow_store, tmp_path):
    """Versions, aliases, per-check tags and descriptions, in a real sqlite MLflow registry."""
    import mlflow

    from tasks.champion import current_champion

    uris = []
    for _ in range(2):
        with mlflow.start_run() as run:
            # The smallest folder MLflow accepts as a model: an MLmodel file.
            (tmp_path / "MLmodel").write_text(f"artifact_path: model\nflavors: {{}}\nrun_id: {run.info.run_id}\n")
            mlflow.log_artifact(str(tmp_path / "MLmodel"), "model")
        uris.append((f"runs:/{run.info.run_id}/model", run.info.run_id))
    assert current_champion("m") is None
    first = register_version(uris[0][0], "m", uris[0][1])
    params = RegisterParams(model_name="m")
    apply_decision("m", first, decide({"accuracy": 0.9}, {"accuracy": 0.5}, None, "accuracy", params), "first")
    assert current_champion("m") == first
    second = register_version(uris[1][0], "m", uris[1][1])
    champion = ChampionScore(first, test={"accuracy": 0.9})
    apply_decision("m", second, decide({"accuracy": 0.8}, {"accuracy": 0.5}, champion, "accuracy", params), "second")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == first
    assert str(client.get_model_version_by_alias("m", CHALLENGER).version) == second
    version = client.get_model_version("m", second)
    assert version.tags["kerasflow.decision"] == CHALLENGER and version.description == "second"
    assert version.tags["kerasflow.check.beats_champion"] == "failed"
    assert version.tags["kerasflow.check.beats_baseline"] == "passed"


def test_the_registered_files_must_be_the_ones_train_checked(mlflow_store, tmp_path):
    """The serving check without TensorFlow: the version's files hash to what train's round trip loaded."""
    import mlflow

    from kerasflow import tracking
    from kerasflow.config import TrackingParams
    from tests.unit.helpers import log_mixed_model

    experiment_id = tracking.configure(TrackingParams(), tmp_path)
    with tracking.open_run(experiment_id) as run_id:
        uri, _, _, _ = log_mixed_model(tmp_path, "classification")
    checked = tracking.artifact_digest(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "logged")))
    version = register_version(uri, "m", run_id)
    ok, detail = verify_registered_files(f"models:/m/{version}", checked)
    assert ok and checked[:12] in detail
    ok, detail = verify_registered_files(f"models:/m/{version}", "0" * 64)
    assert not ok and "are not the ones train checked (000000000000)" in detail
    ok, detail = verify_registered_files("models:/m/99", checked)
    assert not ok and "could not be read" in detail


@pytest.mark.parametrize(
    "champion",
    [
        None,
        {"version": "3", "test": {"accuracy": 0.97, "f1": 0.96}, "test_rows": 360},
        {"version": "3", "skipped": "the champion (version 3) cannot be scored here: it takes column(s) ['zip']"},
    ],
)
def test_the_evaluation_record_reads_and_writes_metrics_json_as_it_is_on_disk(champion, tmp_path):
    """reports/metrics.json is DVC's metrics file: the typed record keeps its keys, their order and values."""
    from kerasflow.io import write_json
    from kerasflow.records import Evaluation

    on_disk = {
        "task": "classification",
        "primary_metric": "accuracy",
        "test": {"accuracy": 0.98, "f1": 0.97, "loss": 0.07},
        "baseline": {"name": "LogisticRegression", "accuracy": 0.96, "f1": 0.95},
        "baseline_rows": 1437,
        "beats_baseline": True,
        "test_rows": 360,
        "decision_threshold": None,
        "epochs_trained": 4,
        "best_epoch": 3,
        "champion_rescored": champion,
    }
    write_json(tmp_path / "metrics.json", on_disk)
    evaluation = Evaluation.read(tmp_path / "metrics.json")
    assert evaluation.score == 0.98
    assert (evaluation.champion_rescored is None) == (champion is None)
    if champion:
        assert evaluation.champion_rescored.metric("accuracy") == champion.get("test", {}).get("accuracy")
        assert evaluation.champion_rescored.skipped == champion.get("skipped")
    evaluation.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "metrics.json").read_text()


def test_the_registration_record_keeps_the_decision_at_the_top_level():
    from kerasflow.records import ChampionScore, Registration

    decision = decide(GOOD, BASELINE, ChampionScore("3", test={"accuracy": 0.99}), "accuracy", PARAMS)
    registration = Registration("m", "4", "run-1", decision, ChampionScore("3", test={"accuracy": 0.99}), "ok")
    payload = registration.to_dict()
    assert list(payload) == [
        "model_name", "version", "previous_champion", "champion_rescored", "smoke_test", "run_id",
        "promote", "reasons", "checks", "alias", "comparisons",
    ]  # fmt: skip
    assert payload["previous_champion"] == "3" and payload["alias"] == CHALLENGER
    assert registration.failed_checks == ["beats_champion"]
