"""The champion at work: `kerasflow predict` on files with drift checks, `mlflow models serve` answering JSON and
CSV, and a gate that compares candidate and champion on the same rows, one registration at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from kerasflow import samples
from tests.conftest import REPO_ROOT, use_store
from tests.integration.servers import BIN, background, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL = "kerasflow-house-prices-mlp"


def project_params(folder: Path, **changes) -> Path:
    """The house-prices example as a project of its own (its CSV beside it), with `changes` applied."""
    tree = yaml.safe_load((REPO_ROOT / "examples" / "house_prices" / "params.yaml").read_text())
    tree["train"]["epochs"] = 40
    for dotted, value in changes.items():
        node = tree
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    if not (folder / "house_prices.csv").exists():
        samples.house_prices().to_csv(folder / "house_prices.csv", index=False)
    return folder / "params.yaml"


def environment(store: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    return env


def pipeline(
    params: Path, env: dict[str, str], stages=("ingest", "validate", "preprocess", "train", "evaluate", "register")
):
    for stage in stages:
        result = subprocess.run(
            [sys.executable, "-m", "flows.dvc_stage", stage], cwd=params.parent, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{stage}:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A house-prices champion in a project of its own (its sqlite store)."""
    root = tmp_path_factory.mktemp("champion")
    params = project_params(root / "project")
    env = environment(root / "mlflow.db")
    pipeline(params, env)
    assert json.loads((params.parent / "reports" / "registration.json").read_text())["alias"] == "champion"
    return params, env, root


def predict(trained, *arguments: str) -> subprocess.CompletedProcess:
    params, env, _ = trained
    command = [str(BIN / "kerasflow"), "predict", "--params", str(params), *arguments]
    return subprocess.run(command, cwd=params.parent, env=env, capture_output=True, text=True, timeout=600)


def new_houses(rows: int, seed: int, shift_area: float = 0.0) -> pd.DataFrame:
    frame = samples.house_prices(rows=rows, seed=seed).drop(columns="price")
    frame["area"] = frame["area"] + shift_area
    return frame


def test_predict_scores_a_file_in_order_and_reports_drift(trained, tmp_path):
    import mlflow

    new = new_houses(500, seed=7, shift_area=80.0)  # much larger houses than training saw
    new.loc[:59, "neighborhood"] = "atlantis"  # 12% a neighbourhood training never had
    new.to_csv(tmp_path / "houses.csv", index=False)
    result = predict(trained, "--input", str(tmp_path / "houses.csv"), "--output", str(tmp_path / "scored.parquet"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scored 500 rows with kerasflow-house-prices-mlp version 1" in result.stdout
    assert "drift: area PSI" in result.stdout and "neighborhood unseen categories 12." in result.stdout
    scored = pd.read_parquet(tmp_path / "scored.parquet")
    assert list(scored.columns) == ["row", "prediction", "model_name", "model_version"] and len(scored) == 500
    assert scored["row"].tolist() == list(range(500))  # each prediction names the input row it is for
    # In the input's row order: the same as the registered model on the same rows.
    client = use_store(trained[2] / "mlflow.db")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    direct = model.unwrap_python_model().predict(None, new)["prediction"].to_numpy()
    np.testing.assert_allclose(scored["prediction"], direct, rtol=1e-5)
    report = json.loads((tmp_path / "scored.drift.json").read_text())
    assert "area" in report["drifted"] and "rooms" not in report["drifted"]
    assert report["columns"]["neighborhood"]["unseen_examples"] == {"atlantis": 60}  # share of present values
    assert (tmp_path / "scored.drift.png").read_bytes()[:4] == b"\x89PNG"
    # The scoring is a run of its own in <experiment>-predictions, with the model version, rows and time.
    experiment = client.get_experiment_by_name("kerasflow-predictions")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["registry.version"] == "1" and run.data.metrics["rows"] == 500
    assert run.data.metrics["seconds"] > 0 and run.data.metrics["drifted_columns"] >= 2
    assert {item.path for item in client.list_artifacts(run.info.run_id, "drift")} == {
        "drift/scored.drift.json",
        "drift/scored.drift.png",  # the plot beside the output, drawn once
    }


def test_fail_on_drift_refuses_to_write_and_bad_input_is_named(trained, tmp_path):
    new_houses(300, seed=8, shift_area=80.0).to_csv(tmp_path / "big.csv", index=False)
    refused = predict(
        trained, "--input", str(tmp_path / "big.csv"), "--output", str(tmp_path / "out.csv"), "--set",
        "predict.fail_on_drift=true",
    )  # fmt: skip
    assert refused.returncode == 1 and "area PSI" in refused.stderr and "no predictions were written" in refused.stderr
    assert not (tmp_path / "out.csv").exists()

    new_houses(50, seed=9).drop(columns="condition").to_csv(tmp_path / "short.csv", index=False)
    missing = predict(trained, "--input", str(tmp_path / "short.csv"), "--output", str(tmp_path / "out.csv"))
    assert missing.returncode == 1 and "['condition'] are missing" in missing.stderr
    garbage = new_houses(50, seed=9).astype({"area": object})
    garbage.loc[31, "area"] = "huge"
    garbage.to_csv(tmp_path / "garbage.csv", index=False)
    wrong = predict(trained, "--input", str(tmp_path / "garbage.csv"), "--output", str(tmp_path / "out.csv"))
    assert wrong.returncode == 1 and "column 'area', row 31: 'huge' is not a number" in wrong.stderr
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but not really")
    broken = predict(trained, "--input", str(tmp_path / "broken.parquet"))
    assert broken.returncode == 1 and "broken.parquet: could not be read as parquet" in broken.stderr
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob("*.predictions.*"))


def peak_rss(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float]:
    """Run `command`; return its exit code and the peak resident memory (MB) of its process tree."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(item.memory_info().rss for item in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return process.returncode, peak / 2**20


def test_predict_streams_a_file_many_batches_long_with_flat_memory(trained, tmp_path):
    params, env, _ = trained
    big = new_houses(20_000, seed=10)
    small_file, large_file = tmp_path / "small.parquet", tmp_path / "large.parquet"
    big.head(20_000).to_parquet(small_file)
    pd.concat([big] * 30, ignore_index=True).to_parquet(large_file, row_group_size=50_000)  # 600,000 rows
    peaks = {}
    for name, source in (("small", small_file), ("large", large_file)):
        command = [
            str(BIN / "kerasflow"), "predict", "--params", str(params), "--input", str(source), "--output",
            str(tmp_path / f"{name}.out.parquet"), "--set", "predict.batch_rows=20000",
        ]  # fmt: skip
        code, peaks[name] = peak_rss(command, params.parent, env)
        assert code == 0
    assert len(pd.read_parquet(tmp_path / "large.out.parquet")) == 600_000
    # Thirty times the rows, thirty batches: memory stays where one batch puts it.
    assert peaks["large"] < peaks["small"] + 150, peaks


def test_the_served_champion_answers_json_and_csv_with_gaps_and_unseen_categories(trained, tmp_path):
    params, env, root = trained
    port = free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    rows = new_houses(4, seed=11)
    rows.loc[0, "area"] = np.nan  # a missing number
    rows.loc[1, "neighborhood"] = "atlantis"  # a category training never had
    rows.loc[2, "condition"] = None  # a missing category
    records = json.loads(rows.to_json(orient="records"))
    bodies = {
        "dataframe_split": (
            "application/json",
            json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}),
        ),
        "dataframe_records": ("application/json", json.dumps({"dataframe_records": records})),
        "csv": ("text/csv", rows.to_csv(index=False)),
    }
    with background(command, root / "serve.log", env, cwd=params.parent) as server:
        wait_healthy(f"http://127.0.0.1:{port}/ping", server, root / "serve.log", timeout=180)
        answers = {}
        for name, (kind, body) in bodies.items():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": kind}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[name] = [row["prediction"] for row in json.loads(response.read())["predictions"]]
        # A value that is not a number is refused with 400 and says which, in either body.
        bad = rows.astype({"area": object})
        bad.loc[3, "area"] = "huge"
        refusals = {}
        for kind, body in (
            ("application/json", json.dumps({"dataframe_records": json.loads(bad.to_json(orient="records"))})),
            ("text/csv", bad.to_csv(index=False)),
        ):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": kind}
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=60)
            refusals[kind] = (refused.value.code, refused.value.read().decode())
    assert all(len(values) == 4 and np.all(np.isfinite(values)) for values in answers.values())
    np.testing.assert_allclose(answers["dataframe_split"], answers["csv"], rtol=1e-5)
    np.testing.assert_allclose(answers["dataframe_records"], answers["csv"], rtol=1e-5)
    assert refusals["application/json"][0] == 400 and "column area" in refusals["application/json"][1]
    assert refusals["text/csv"][0] == 400 and "'huge'" in refusals["text/csv"][1]


def test_the_gate_compares_champion_and_candidate_on_the_candidates_test_rows(tmp_path):
    """A champion trained on one split (seed 1), a candidate on another (seed 2): both scored on seed 2's test rows."""
    import mlflow

    from tasks.evaluate import regression_metrics
    from tasks.preprocess import read_split

    env = environment(tmp_path / "mlflow.db")
    first = project_params(tmp_path / "first", seed=1)
    pipeline(first, env)
    second = project_params(tmp_path / "second", seed=2, **{"train.epochs": 3})
    pipeline(second, env)
    registration = json.loads((second.parent / "reports" / "registration.json").read_text())
    rescored = registration["champion_rescored"]
    assert rescored["version"] == "1" and registration["previous_champion"] == "1"
    use_store(tmp_path / "mlflow.db")
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").unwrap_python_model()
    test = read_split(second.parent / "data" / "processed", "test")
    on_these_rows = regression_metrics(test.y, champion.predict(None, test.x)["prediction"].to_numpy())
    assert rescored["test"]["r2"] == pytest.approx(on_these_rows["r2"], rel=1e-6)
    first_own = json.loads((first.parent / "reports" / "metrics.json").read_text())["test"]["r2"]
    assert rescored["test"]["r2"] != pytest.approx(first_own)  # not its own split's number
    assert any("(version 1)" in reason and "on the same test rows" in reason for reason in registration["reasons"])


def test_registrations_at_the_same_time_crown_the_best(tmp_path):
    """Three candidates of different quality register at once: read-compare-move is one at a time, and the
    champion read again inside the lock, so the best one ends as champion whatever order they finish in."""
    env = environment(tmp_path / "mlflow.db")
    gate = {"register.require_beat_baseline": False, "register.thresholds": {"r2": 0.0}}
    # The same data and split (prepared once, then copied); no champion yet when each evaluates.
    upstream = project_params(tmp_path / "upstream", **gate)
    pipeline(upstream, env, stages=("ingest", "validate", "preprocess"))
    projects = []
    for epochs in (2, 6, 40):
        shutil.copytree(upstream.parent, tmp_path / f"p{epochs}")
        projects.append(project_params(tmp_path / f"p{epochs}", **{"train.epochs": epochs, **gate}))
        pipeline(projects[-1], env, stages=("train", "evaluate"))
    scores = {p: json.loads((p.parent / "reports" / "metrics.json").read_text())["test"]["r2"] for p in projects}
    assert len({round(value, 6) for value in scores.values()}) == 3, scores
    results = {}

    def register(params: Path) -> None:
        results[params] = subprocess.run(
            [sys.executable, "-m", "flows.dvc_stage", "register"],
            cwd=params.parent,
            env=env,
            capture_output=True,
            text=True,
        )

    threads = [threading.Thread(target=register, args=(params,)) for params in reversed(projects)]  # worst last
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.returncode == 0 for result in results.values()), [r.stderr[-2000:] for r in results.values()]
    client = use_store(tmp_path / "mlflow.db")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    best = max(projects, key=scores.get)
    best_run = json.loads((best.parent / "reports" / "mlflow_run.json").read_text())["run_id"]
    assert champion.run_id == best_run, {str(p): scores[p] for p in projects}
