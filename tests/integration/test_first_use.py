"""A new user's first steps in a clone of the project: their own CSV named in params.yaml (one clear error, no
traceback), then `kerasflow init` on it, `kerasflow run` and `dvc repro`, each working."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from kerasflow import samples
from tests.integration.servers import clone_project, project_env, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_your_own_csv_in_one_command_then_kerasflow_run_and_dvc_repro(tmp_path):
    root = tmp_path / "project"
    env = project_env(root)
    clone_project(root, env)
    samples.house_prices(rows=600).to_csv(root / "houses.csv", index=False)

    # As the README's ingest section has it, without init: the data has gaps the defaults refuse. One message,
    # naming the user's file, no traceback (Prefect's task and flow logs keep it).
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"].update(source="file", path="houses.csv", target="price")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["kerasflow", "run"], root, env, check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("kerasflow: ")]
    assert len(errors) == 1 and f"{root / 'houses.csv'}: 4 validation problem(s)" in errors[0], failed.stderr
    assert "max_missing_fraction" in failed.stderr and "dataset.parquet" not in failed.stderr
    assert len(failed.stderr.splitlines()) < 20  # it was 96 lines for this one error
    run(["git", "checkout", "params.yaml"], root, env)

    chosen = run(["kerasflow", "init", "--data", "houses.csv", "--target", "price"], root, env)
    assert "ingest.task = 'regression'" in chosen.stdout and "validate.max_missing_fraction" in chosen.stdout
    written = yaml.safe_load((root / "params.yaml").read_text())
    assert written["ingest"]["path"] == "houses.csv" and written["register"]["model_name"] == "kerasflow-houses-mlp"
    assert not (root / "data" / "schema.json").exists()  # the digits schema is cleared
    assert "houses.csv" in (root / "dvc.yaml").read_text()
    deployments = (root / "prefect.yaml").read_text()  # reproduce's default and the retraining trigger follow
    assert "kerasflow.model.kerasflow-houses-mlp" in deployments and "kerasflow-digits-cnn" not in deployments

    flow = run(["kerasflow", "run"], root, env)
    assert "registered      kerasflow-houses-mlp version 1 -> champion" in flow.stdout, flow.stdout
    r2 = float(next(line.split()[2] for line in flow.stdout.splitlines() if line.strip().startswith("test r2")))
    assert r2 > 0.8

    repro = run(["dvc", "repro"], root, env)
    assert "Running stage 'register'" in repro.stdout
    registration = yaml.safe_load((root / "reports" / "registration.json").read_text())
    assert registration["model_name"] == "kerasflow-houses-mlp" and registration["version"] == "2"
    assert "up to date" in run(["dvc", "status"], root, env).stdout


def imbalanced_table(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A rare positive class (about 5 %) that depends on an interaction and a category, with gaps in a number."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    region = rng.choice(["north", "south", "east", "west"], rows)
    logit = 2.5 * x1 * x2 + 1.5 * (region == "north") - 4.5
    frame = pd.DataFrame({"x1": x1, "x2": x2, "region": region, "id": [f"r{i:05d}" for i in range(rows)]})
    frame.loc[rng.random(rows) < 0.1, "x2"] = np.nan
    frame["fraud"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def negated_reviews(rows: int = 1200, seed: int = 0) -> pd.DataFrame:
    """Short reviews whose sentiment words are flipped by a `not` before them: word pairs tell, single words don't."""
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "plot", "was", "and", "acting", "music", "story", "ending", "cast"]
    texts, labels = [], []
    for _ in range(rows):
        liked = bool(rng.integers(0, 2))
        negated = bool(rng.integers(0, 2))
        word = rng.choice(["good", "great", "fine"] if liked != negated else ["bad", "dull", "poor"])
        words = list(rng.choice(filler, 6)) + (["not", word] if negated else [word])
        rng.shuffle(words[:6])
        texts.append(" ".join(words))
        labels.append("liked" if liked else "disliked")
    return pd.DataFrame({"review": texts, "verdict": labels})


@pytest.mark.parametrize(
    ("data", "target", "metric"),
    [(imbalanced_table, "fraud", "roc_auc"), (negated_reviews, "verdict", "accuracy")],
    ids=["imbalanced", "text"],
)
def test_init_then_run_ends_in_a_champion_that_beats_the_baseline(tmp_path, data, target, metric):
    root = tmp_path / "project"
    env = project_env(root)
    clone_project(root, env)
    data().to_csv(root / "mine.csv", index=False)
    chosen = run(["kerasflow", "init", "--data", "mine.csv", "--target", target], root, env)
    assert f"evaluate.primary_metric = '{metric}'" in chosen.stdout, chosen.stdout
    flow = run(["kerasflow", "run"], root, env)
    assert "-> champion" in flow.stdout, flow.stdout
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["primary_metric"] == metric and metrics["beats_baseline"] is True
    assert metrics["test"][metric] > metrics["baseline"][metric]
    assert metrics["reference"]["name"] and f"reference {metrics['reference'][metric]:.4f}" in flow.stdout
