"""Benchmarks: kerasflow against bare Keras scripts doing the same work, in the same invocation.

    python -m bench                       # every section (about 40 minutes on 2 cores)
    python -m bench --only throughput --repeats 5

Each comparison alternates a kerasflow run and a bare run, reports medians and ratios, and
writes bench/results/latest.json and latest.md (also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
ENV.pop("MLFLOW_TRACKING_URI", None)


def machine() -> dict[str, Any]:
    memory_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024**2, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gpu": "see the GPU path section",
    }


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """Run a command; return its wall time and output, stdout first (raise with the output on failure)."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds, result.stdout + result.stderr


def make_project(folder: Path, changes: dict[str, Any], git: bool = False) -> Path:
    """A project folder with params.yaml (the shipped one, changed), optionally a git + DVC repo."""
    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        for name in ("kerasflow", "tasks", "flows"):
            shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
        (folder / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.kerasflow/\n")
        for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"]):
            run(command, folder)
        run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"], folder)
    return folder


def stage(folder: Path, name: str) -> float:
    return run([sys.executable, "-m", "flows.dvc_stage", name], folder)[0]


def mlflow_epoch_seconds(folder: Path) -> tuple[list[float], int]:
    """Epoch durations of the pipeline's last training run, from the MLflow timestamps of each epoch."""
    import mlflow

    run_id = json.loads((folder / "reports" / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    # Between the moments successive epochs were logged: every callback (checkpoint, backup, logging) counts.
    stamps = [point.timestamp / 1000 for point in client.get_metric_history(run_id, "epoch/train_loss")]
    rows = json.loads((folder / "data" / "processed" / "state.json").read_text())["rows"]["train"]
    return np.diff(stamps).tolist(), rows


def last_json(output: str) -> dict[str, Any]:
    """The last line of output that is a JSON object (scripts print their report last on stdout)."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


def bare(model: str, epochs: int, *extra: str) -> tuple[float, dict[str, Any]]:
    command = [sys.executable, str(REPO / "bench" / "bare_keras.py"), "--model", model, "--epochs", str(epochs)]
    seconds, output = run([*command, *extra], REPO)
    return seconds, last_json(output)


def tabular_csv(path: Path, rows: int, columns: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, columns)).astype("float32")
    frame = pd.DataFrame(x, columns=[f"f{index}" for index in range(columns)])
    frame["label"] = (x[:, : columns // 2].sum(axis=1) > 0).astype("int8")
    frame.to_parquet(path, index=False) if path.suffix == ".parquet" else frame.to_csv(path, index=False)


WORKLOADS = {
    "digits_cnn": {"train.early_stopping.enabled": False},
    "tabular_mlp": {
        "ingest.source": "file",
        "ingest.target": "label",
        "train.early_stopping.enabled": False,
        "train.batch_size": 64,
        "register.thresholds": {},
        "model.layers": [
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 32, "activation": "relu"},
        ],
    },
}


def throughput(work: Path, repeats: int, epochs: int) -> dict[str, Any]:
    """Samples per second of the training epochs: inside the pipeline's train stage over a bare fit."""
    results = {}
    for name, changes in WORKLOADS.items():
        folder = work / f"throughput-{name}"
        changes = {**changes, "train.epochs": epochs}
        if name == "tabular_mlp":
            folder.mkdir(parents=True)
            tabular_csv(folder / "table.parquet", 20_000, 20)
            changes["ingest.path"] = str(folder / "table.parquet")
        make_project(folder, changes)
        for name_of_stage in ("ingest", "validate", "preprocess"):
            stage(folder, name_of_stage)
        batch = str(changes.get("train.batch_size", 32))
        pipeline, plain = [], []
        for _ in range(repeats):  # alternate, so drift in the machine's speed hits both alike
            stage(folder, "train")
            seconds, rows = mlflow_epoch_seconds(folder)
            pipeline.append(rows / statistics.median(seconds[1:]))  # epoch 1 onwards: after tracing
            _, report = bare(name, epochs, "--processed", str(folder / "data" / "processed"), "--batch-size", batch)
            plain.append(report["train_rows"] / statistics.median(report["epoch_seconds"][1:]))
        ratios = [ours / theirs for ours, theirs in zip(pipeline, plain, strict=True)]
        # The cost of train.deterministic (op determinism, on by default without a GPU): the same project with it off.
        free = []
        make_project(folder, {**changes, "train.deterministic": False})
        for _ in range(repeats):
            stage(folder, "train")
            seconds, rows = mlflow_epoch_seconds(folder)
            free.append(rows / statistics.median(seconds[1:]))
        make_project(folder, changes)
        results[name] = {
            "kerasflow_samples_per_s": statistics.median(pipeline),
            "bare_samples_per_s": statistics.median(plain),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "nondeterministic_samples_per_s": statistics.median(free),
            "deterministic_over_nondeterministic": statistics.median(pipeline) / statistics.median(free),
            "train_rows": rows,
            "epochs": epochs,
        }
    return results


def fixed_cost(work: Path, repeats: int, epochs: int) -> dict[str, Any]:
    """Wall time of a forced `dvc repro` and of the Prefect flow over a bare script doing the same work."""
    changes = {"train.epochs": epochs, "train.early_stopping.enabled": False}
    repo = make_project(work / "fixed-dvc", changes, git=True)
    prefect_project = make_project(work / "fixed-prefect", changes)
    dvc_times, prefect_times, bare_times, bare_training = [], [], [], []
    for _ in range(repeats):
        dvc_times.append(run(["dvc", "repro", "-f"], repo)[0])
        seconds, _ = run([str(BIN / "kerasflow"), "run", "--params", str(prefect_project / "params.yaml")], REPO)
        prefect_times.append(seconds)
        seconds, report = bare("digits_cnn", epochs, "--from-source", "--save", str(work / "bare.keras"))
        bare_times.append(seconds)
        bare_training.append(report["parts"]["training"])
    # Where the pipeline's time goes: each stage as its own process, as dvc runs it.
    stages = {name: stage(repo, name) for name in ("ingest", "validate", "preprocess", "train", "evaluate", "register")}
    epoch_seconds, _ = mlflow_epoch_seconds(repo)
    noop = [run(["dvc", "repro"], repo)[0] for _ in range(3)]
    with_server = prefect_with_running_server(work, prefect_project, repeats)
    rerun_seconds, rerun_output = run(
        [str(BIN / "kerasflow"), "run", "--params", str(prefect_project / "params.yaml")], REPO
    )
    cached = sorted(set(re.findall(r"Task run '(\w+)' - Finished in state Cached", rerun_output)))
    bare_median, dvc_median, prefect_median = map(statistics.median, (bare_times, dvc_times, prefect_times))
    return {
        "epochs": epochs,
        "bare_script_s": bare_median,
        "bare_training_s": statistics.median(bare_training),
        "dvc_repro_forced_s": dvc_median,
        "prefect_flow_s": prefect_median,
        "dvc_fixed_cost_over_bare_s": dvc_median - bare_median,
        "prefect_fixed_cost_over_bare_s": prefect_median - bare_median,
        "dvc_over_bare_ratio": dvc_median / bare_median,
        "prefect_over_bare_ratio": prefect_median / bare_median,
        "stage_seconds": stages,
        "training_epochs_s_inside_train_stage": float(np.sum(epoch_seconds)),
        "noop_dvc_repro_s": statistics.median(noop),
        "prefect_with_running_server_s": with_server,
        "prefect_with_server_fixed_cost_over_bare_s": with_server - bare_median,
        "prefect_rerun_s": rerun_seconds,
        "prefect_rerun_cached_tasks": cached,
    }


def prefect_with_running_server(work: Path, project: Path, repeats: int) -> float:
    """The flow against an already running Prefect server, as deployments and served flows run."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**ENV, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/api/health"], capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise TimeoutError("the Prefect server did not start")
            time.sleep(0.5)
        ENV.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_HOME=env["PREFECT_HOME"])
        command = [str(BIN / "kerasflow"), "run", "--no-cache", "--params", str(project / "params.yaml")]
        return statistics.median(run(command, REPO)[0] for _ in range(repeats))
    finally:
        ENV.pop("PREFECT_API_URL", None)
        ENV.pop("PREFECT_HOME", None)
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


STAGES = ("ingest", "validate", "preprocess", "train", "evaluate", "register")


def scale(work: Path, sizes: list[int], columns: int = 50) -> dict[str, Any]:
    """N rows x 50 numeric columns (a Parquet file) through every stage, one process per stage as `dvc repro` runs
    them, with one epoch of training: each stage's time and peak memory (of its process tree); and the train stage's
    epoch against a bare script streaming the same split through tf.data into the same model."""
    results: dict[str, Any] = {}
    for rows in sizes:
        folder = work / f"scale-{rows}"
        folder.mkdir(parents=True)
        big_parquet(folder / "table.parquet", rows, columns, label=True)
        changes = {**WORKLOADS["tabular_mlp"], "ingest.path": str(folder / "table.parquet"), "train.epochs": 1,
                   "train.batch_size": 256, "register.require_beat_baseline": False}  # fmt: skip
        make_project(folder, changes)
        stages = {}
        for name in STAGES:
            seconds, peak, _ = peak_of([sys.executable, "-m", "flows.dvc_stage", name], folder)
            stages[name] = {"seconds": seconds, "peak_pss_mb": peak}
        epoch = epoch_seconds(folder)[0]
        _, bare_peak, output = peak_of(
            [sys.executable, str(REPO / "bench" / "bare_stream.py"), "train", "--processed",
             str(folder / "data" / "processed"), "--epochs", "1", "--batch-size", "256", "--deterministic"], folder,
        )  # fmt: skip
        bare_epoch = last_json(output)["epoch_seconds"][0]
        results[str(rows)] = {
            "stages": stages,
            "peak_pss_mb": max(stage["peak_pss_mb"] for stage in stages.values()),
            "seconds": sum(stage["seconds"] for stage in stages.values()),
            "seconds_per_million_rows": sum(stage["seconds"] for stage in stages.values()) / (rows / 1e6),
            "train_epoch_s": epoch,
            "bare_stream_epoch_s": bare_epoch,
            "bare_stream_peak_pss_mb": bare_peak,
            "epoch_over_bare": epoch / bare_epoch,
        }
        shutil.rmtree(folder, ignore_errors=True)
    sizes_sorted = sorted(results, key=int)
    if len(sizes_sorted) > 1:
        small, large = sizes_sorted[0], sizes_sorted[-1]
        results["time_per_million_rows_ratio"] = {
            "rows": [int(small), int(large)],
            "ratio": results[large]["seconds_per_million_rows"] / results[small]["seconds_per_million_rows"],
        }
    return results


def epoch_seconds(folder: Path) -> list[float]:
    """The train stage's epoch times, as its MLflow run logged them (`epoch/seconds`)."""
    import mlflow

    run_id = json.loads((folder / "reports" / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    return [point.value for point in client.get_metric_history(run_id, "epoch/seconds")]


def workers(work: Path, rows: int, epochs: int = 3, columns: int = 50) -> dict[str, Any]:
    """One process against two local workers (train.distribute: multi_worker, train.workers: 2) on the same
    processed data, and the bare streaming script doing the same both ways: epoch times (the last epoch's, past
    tracing), per-worker throughput, and the all-reduce's share of an epoch. On one 2-core machine two workers
    split the same cores: this shows the engine works and what it costs, not a speed-up."""
    from tasks.cluster import free_ports

    folder = work / "workers"
    folder.mkdir(parents=True)
    big_parquet(folder / "table.parquet", rows, columns, label=True)
    changes = {**WORKLOADS["tabular_mlp"], "ingest.path": str(folder / "table.parquet"), "train.epochs": epochs,
               "train.batch_size": 256, "preprocess.row_group_rows": 16384}  # fmt: skip
    make_project(folder, changes)
    for name in ("ingest", "validate", "preprocess"):
        stage(folder, name)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    results: dict[str, Any] = {"rows": rows}
    for label, train in (
        ("one_process", {"distribute": "off"}),
        ("two_workers", {"distribute": "multi_worker", "workers": 2}),
    ):
        params["train"].update(train)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        seconds = stage(folder, "train")
        epoch = epoch_seconds(folder)[-1]
        results[label] = {"stage_s": seconds, "epoch_s": epoch}
    processed = str(folder / "data" / "processed")
    bare_command = [sys.executable, str(REPO / "bench" / "bare_stream.py"), "train", "--processed", processed,
                    "--epochs", str(epochs), "--batch-size", "256", "--deterministic"]  # fmt: skip
    _, output = run(bare_command, REPO)
    results["bare_one_process"] = {"epoch_s": last_json(output)["epoch_seconds"][-1]}
    ports = ",".join(str(port) for port in free_ports(2))
    started = [
        subprocess.Popen([*bare_command, "--worker", str(index), "--ports", ports], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for index in range(2)
    ]  # fmt: skip
    reports = [last_json(process.communicate(timeout=3600)[0]) for process in started]
    bare_two = reports[0]
    epoch = bare_two["epoch_seconds"][-1]
    results["bare_two_workers"] = {
        "epoch_s": epoch,
        "all_reduce_s": bare_two["all_reduce_s"],
        "weights": bare_two["weights"],
        "all_reduce_bytes_per_step": bare_two["all_reduce_bytes_per_step"],
        "steps_per_epoch": bare_two["steps_per_epoch"],
        "all_reduce_share": bare_two["all_reduce_s"] * bare_two["steps_per_epoch"] / epoch,
    }
    train_rows = json.loads((folder / "data" / "processed" / "state.json").read_text())["rows"]["train"]
    for label, count in (("one_process", 1), ("two_workers", 2), ("bare_one_process", 1), ("bare_two_workers", 2)):
        results[label]["rows_per_s_per_worker"] = train_rows / count / results[label]["epoch_s"]
    results["two_workers_over_bare"] = results["two_workers"]["epoch_s"] / results["bare_two_workers"]["epoch_s"]
    results["one_process_over_bare"] = results["one_process"]["epoch_s"] / results["bare_one_process"]["epoch_s"]
    shutil.rmtree(folder, ignore_errors=True)
    return results


BARE_PREDICT = """
import json, resource, sys, time
import keras, numpy as np, pandas as pd, pyarrow.parquet as pq
model = keras.saving.load_model(sys.argv[1], safe_mode=True, compile=False)
batch = int(sys.argv[4])
model.predict({"numeric": np.zeros((batch, 50), "float32")}, batch_size=batch, verbose=0)  # traced once
started = time.perf_counter()
table = pq.read_table(sys.argv[2])
x = np.column_stack([table.column(i).to_numpy() for i in range(table.num_columns)]).astype("float32")
del table
read = time.perf_counter()
out = model.predict({"numeric": x}, batch_size=batch, verbose=0)
predicted = time.perf_counter()
pd.DataFrame({"probability": out.reshape(-1)}).to_parquet(sys.argv[3])
written = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": len(x), "read_s": read - started, "predict_s": predicted - read,
                  "all_s": written - started, "peak_rss_mb": peak}))
"""


def big_parquet(path: Path, rows: int, columns: int, seed: int = 0, chunk: int = 500_000, label: bool = False) -> None:
    """`rows` x `columns` random floats (and a label that depends on them), written a row group at a time (the
    benchmark's own memory stays low)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = [f"f{index}" for index in range(columns)]
    fields = [(name, pa.float32()) for name in names] + ([("label", pa.int8())] if label else [])
    with pq.ParquetWriter(path, pa.schema(fields)) as writer:
        for start in range(0, rows, chunk):
            block = rng.normal(size=(min(chunk, rows - start), columns)).astype("float32")
            values = dict(zip(names, block.T, strict=True))
            if label:
                values["label"] = (block[:, : columns // 2].sum(axis=1) > 0).astype("int8")
            writer.write_table(pa.table(values))


def peak_of(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak PSS (MB) of the process tree (bench/memory.py), and output of `command` (in ENV)."""
    from bench.memory import peak_of as measured

    return measured(command, cwd, ENV)


def prediction(work: Path, rows: int, columns: int = 50, batch: int = 65536, model_batch: int = 8192) -> dict[str, Any]:
    """`kerasflow predict` on `rows` x `columns` against a bare `model.predict` over the same rows."""
    folder = work / "predict"
    folder.mkdir(parents=True)
    tabular_csv(folder / "table.parquet", 20_000, columns)
    make_project(folder, {**WORKLOADS["tabular_mlp"], "ingest.path": str(folder / "table.parquet"), "train.epochs": 1,
                          "register.require_beat_baseline": False, "register.model_name": "bench-tabular"})  # fmt: skip
    for name in ("ingest", "validate", "preprocess", "train", "evaluate", "register"):
        stage(folder, name)
    big_parquet(folder / "new.parquet", rows, columns)
    command = [str(BIN / "kerasflow"), "predict", "--params", str(folder / "params.yaml"), "--input",
               str(folder / "new.parquet"), "--output", str(folder / "scored.parquet"), "--set",
               f"predict.batch_rows={batch}"]  # fmt: skip
    wall, peak, output = peak_of(command, folder)
    scoring = float(re.search(r"in ([0-9.]+) s", output).group(1))
    _, bare_peak, bare_output = peak_of(
        [sys.executable, "-c", BARE_PREDICT, str(folder / "models" / "model.keras"), str(folder / "new.parquet"),
         str(folder / "bare.parquet"), str(model_batch)], folder)  # fmt: skip
    bare = last_json(bare_output)
    # The careful hand-written streaming script: the same Parquet in batches, predict_on_batch, Parquet out.
    script = str(REPO / "bench" / "bare_stream.py")
    _, stream_peak, stream_output = peak_of(
        [sys.executable, script, "predict", "--model", str(folder / "models" / "model.keras"), "--input",
         str(folder / "new.parquet"), "--output", str(folder / "stream.parquet"), "--batch-rows", str(batch)],
        folder)  # fmt: skip
    streamed = last_json(stream_output)
    return {
        "rows": rows,
        "bare_stream_s": streamed["seconds"],
        "bare_stream_rows_per_s": rows / streamed["seconds"],
        "bare_stream_peak_pss_mb": stream_peak,
        "stream_ratio": streamed["seconds"] / scoring,
        "columns": columns,
        "batch_rows": batch,
        "kerasflow_wall_s": wall,
        "kerasflow_scoring_s": scoring,
        "kerasflow_rows_per_s": rows / scoring,
        "kerasflow_peak_pss_mb": peak,
        "bare_predict_s": bare["predict_s"],
        "bare_read_predict_write_s": bare["all_s"],
        "bare_rows_per_s": rows / bare["predict_s"],
        "bare_peak_pss_mb": bare_peak,
        # Against model.predict alone, on rows already in memory; and against a script doing the same work.
        "throughput_ratio": bare["predict_s"] / scoring,
        "same_work_ratio": bare["all_s"] / scoring,
    }


def image_folder(folder: Path, images: int, size: int, seed: int = 0) -> Path:
    """`images` JPEGs of size x size in three class folders: a bright square, a bright disc, or noise only."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    for index in range(images):
        kind = ("square", "disc", "noise")[index % 3]
        picture = rng.integers(0, 90, (size, size, 3))
        centre, radius = rng.integers(size // 4, 3 * size // 4, 2), int(rng.integers(size // 8, size // 4))
        if kind == "square":
            picture[(abs(rows - centre[0]) < radius) & (abs(cols - centre[1]) < radius)] += 150
        elif kind == "disc":
            picture[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2] += 150
        (folder / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(picture, 0, 255).astype("uint8")).save(folder / kind / f"{index:06d}.jpg", quality=90)
    return folder


def image_pipeline(work: Path, images: int, size: int = 160) -> dict[str, Any]:
    """An image folder of `images` generated JPEGs through every stage, one process per stage: time, peak memory,
    and that nothing on disk holds pixel columns."""
    import pyarrow.parquet as pq

    folder = work / "images"
    started = time.perf_counter()
    image_folder(folder / "pictures", images, size)
    generated = time.perf_counter() - started
    changes = {
        "ingest.source": "image_folder", "ingest.path": str(folder / "pictures"), "ingest.image_shape": [size, size, 3],
        "train.epochs": 1, "train.batch_size": 64, "train.early_stopping.enabled": False,
        "register.thresholds": {}, "register.require_beat_baseline": False, "register.model_name": "bench-images",
        "model.layers": [
            {"type": "conv2d", "filters": 16, "kernel_size": 3, "strides": 2, "activation": "relu"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "strides": 2, "activation": "relu"},
            {"type": "global_average_pooling2d"},
            {"type": "dense", "units": 32, "activation": "relu"},
        ],
    }  # fmt: skip
    make_project(folder, changes)
    stages = {}
    for name in STAGES:
        seconds, peak, _ = peak_of([sys.executable, "-m", "flows.dvc_stage", name], folder)
        stages[name] = {"seconds": seconds, "peak_pss_mb": peak}
    tables = [path for path in folder.rglob("*.parquet")]
    widest = max(len(pq.read_schema(path).names) for path in tables)
    metrics = json.loads((folder / "reports" / "metrics.json").read_text())
    on_disk = sum(path.stat().st_size for path in (folder / "pictures").rglob("*.jpg"))
    result = {
        "images": images,
        "size": [size, size, 3],
        "jpeg_mb": on_disk / 2**20,
        "generate_s": generated,
        "stages": stages,
        "peak_pss_mb": max(stage["peak_pss_mb"] for stage in stages.values()),
        "widest_table_columns": widest,
        "parquet_mb": sum(path.stat().st_size for path in tables) / 2**20,
        "test_accuracy": metrics["test"]["accuracy"],
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def tune_study(folder: Path, tree: dict[str, Any]) -> dict[str, Any]:
    """Run `kerasflow tune` on a params tree in a fresh folder; return its result, wall time and trials."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    seconds, output = run([str(BIN / "kerasflow"), "tune", "--json"], folder)
    result, _ = json.JSONDecoder().raw_decode(output)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    trials = optuna.load_study(study_name=result["study"], storage=storage).get_trials()
    starts = [trial.datetime_start for trial in trials]
    ends = [trial.datetime_complete for trial in trials]
    return {
        "result": result,
        "wall_s": seconds,
        "trials_phase_s": (max(ends) - min(starts)).total_seconds(),
        "trial_s": [(end - start).total_seconds() for start, end in zip(starts, ends, strict=True)],
        "epochs": sum(trial.user_attrs.get("epochs", 0) for trial in trials),
        "best": result["best"]["value"],
    }


def tuning(work: Path) -> dict[str, Any]:
    """Median pruning against none (the house-prices TPE example), two trials at once against one, and the cost
    of a trial (Prefect task, MLflow child run, data, build, fit) over the bare script fitting the same model."""
    example = yaml.safe_load((REPO / "examples" / "house_prices_tuning" / "params.yaml").read_text())
    example["ingest"]["path"] = str(REPO / "examples" / "house_prices" / "house_prices.csv")
    pruned = tune_study(work / "tune-median", example)
    full = tune_study(work / "tune-none", {**example, "tune": {**example["tune"], "pruner": "none"}})
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["train"]["early_stopping"]["enabled"] = False
    base["register"].update(thresholds={}, require_beat_baseline=False)
    # Four points of the same cost (the default CNN, Adam, five epochs): what differs is how they run.
    base["tune"] = {
        "sampler": "grid", "n_trials": 4, "pruner": "none", "epochs": 5,
        "space": {"model.optimizer.learning_rate": {"choice": [0.001, 0.0011, 0.0012, 0.0013]}},
    }  # fmt: skip
    one = tune_study(work / "tune-serial", {**base, "tune": {**base["tune"], "parallelism": 1}})
    two = tune_study(work / "tune-parallel", {**base, "tune": {**base["tune"], "parallelism": 2}})
    (processed,) = (work / "tune-serial").glob(".kerasflow/cache/preprocess-*")
    bares = [bare("digits_cnn", 5, "--processed", str(processed))[1]["parts"] for _ in range(3)]
    bare_fit = statistics.median(parts["data"] + parts["build"] + parts["training"] for parts in bares)
    trial = statistics.median(one["trial_s"])
    return {
        "pruning": {
            "epochs_median_pruner": pruned["epochs"],
            "epochs_no_pruner": full["epochs"],
            "epochs_saved_share": 1 - pruned["epochs"] / full["epochs"],
            "best_median_pruner": pruned["best"],
            "best_no_pruner": full["best"],
            "best_relative_difference": (pruned["best"] - full["best"]) / abs(full["best"]),
            "trials_phase_s": {"median": pruned["trials_phase_s"], "none": full["trials_phase_s"]},
            "counts": {"median": pruned["result"]["counts"], "none": full["result"]["counts"]},
        },
        "parallel": {
            "trials": 4,
            "one_at_a_time_s": one["trials_phase_s"],
            "two_at_a_time_s": two["trials_phase_s"],
            "wall_ratio": two["trials_phase_s"] / one["trials_phase_s"],
        },
        "trial_overhead": {
            "trial_s_median": trial,
            "bare_data_build_fit_s": bare_fit,
            "overhead_s": trial - bare_fit,
            "epochs": 5,
        },
    }


def gpu_path() -> dict[str, Any]:
    """What the GPU-path switches resolve to here, and GPU figures only if a GPU was there to measure them."""
    import tensorflow as tf

    from kerasflow.config import TrainParams
    from tasks.accelerator import accelerator_plan

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "here": accelerator_plan(TrainParams()).to_dict(),
        "gpus": len(gpus),
        "on_a_gpu": "measured" if gpus else "not measured: no GPU on this machine",
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# kerasflow benchmarks ({results['date']})", "", f"Machine: {results['machine']}", ""]
    if "workers" in results:
        row = results["workers"]
        lines += [f"## Training across workers ({row['rows']:,} rows x 50, batch 256 global; last epoch)", "",
                  "Two workers share one machine's cores here: this shows the engine at work and its cost, not a "
                  "speed-up.", "",
                  "| | epoch s | rows/s per worker | train stage s |", "|---|---|---|---|"]  # fmt: skip
        for label in ("one_process", "two_workers", "bare_one_process", "bare_two_workers"):
            stage_s = f"{row[label]['stage_s']:.1f}" if "stage_s" in row[label] else ""
            lines.append(
                f"| {label} | {row[label]['epoch_s']:.2f} | {row[label]['rows_per_s_per_worker']:.0f} | {stage_s} |"
            )
        bare = row["bare_two_workers"]
        lines += ["", f"kerasflow / bare: two workers {row['two_workers_over_bare']:.3f}, one process "
                  f"{row['one_process_over_bare']:.3f}. All-reduce of {bare['weights']:,} weights "
                  f"({bare['all_reduce_bytes_per_step'] / 1024:.1f} KiB sent per worker per step): "
                  f"{bare['all_reduce_s'] * 1000:.2f} ms, {bare['all_reduce_share']:.1%} of an epoch.", ""]  # fmt: skip
    if "throughput" in results:
        lines += ["## Training throughput (samples/s, median of alternating runs)", "",
                  "kerasflow runs with `train.deterministic: auto` (op determinism on without a GPU); the last column "
                  "is the same train stage with it off, and the cost of determinism.", "",
                  "| workload | kerasflow | bare Keras | ratio (target >= 0.95) | train.deterministic: false |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, row in results["throughput"].items():
            lines.append(
                f"| {name} ({row['train_rows']} rows) | {row['kerasflow_samples_per_s']:.0f} | "
                f"{row['bare_samples_per_s']:.0f} | {row['ratio']:.3f} | {row['nondeterministic_samples_per_s']:.0f} "
                f"(determinism costs {1 - row['deterministic_over_nondeterministic']:+.1%}) |"
            )
        lines.append("")
    if "fixed_cost" in results:
        row = results["fixed_cost"]
        lines += [
            f"## Fixed cost (digits CNN, {row['epochs']} epochs)", "",
            f"- bare script end to end: {row['bare_script_s']:.1f} s (training {row['bare_training_s']:.1f} s)",
            f"- forced `dvc repro`: {row['dvc_repro_forced_s']:.1f} s: fixed cost over bare "
            f"{row['dvc_fixed_cost_over_bare_s']:.1f} s (target <= 15 s), ratio {row['dvc_over_bare_ratio']:.2f}",
            f"- Prefect flow (`kerasflow run`, temporary server included): {row['prefect_flow_s']:.1f} s: fixed "
            f"cost over bare {row['prefect_fixed_cost_over_bare_s']:.1f} s, ratio {row['prefect_over_bare_ratio']:.2f}",
            f"- Prefect flow against a running server (as deployments run): {row['prefect_with_running_server_s']:.1f}"
            f" s: fixed cost over bare {row['prefect_with_server_fixed_cost_over_bare_s']:.1f} s",
            "- per stage (own process each): " + ", ".join(f"{k} {v:.1f} s" for k, v in row["stage_seconds"].items()),
            f"- training epochs inside the train stage: {row['training_epochs_s_inside_train_stage']:.1f} s",
            f"- no-op `dvc repro`: {row['noop_dvc_repro_s']:.2f} s (target < 3 s)",
            f"- Prefect rerun: {row['prefect_rerun_s']:.1f} s, cached tasks: {row['prefect_rerun_cached_tasks']}",
            "",
        ]  # fmt: skip
    if "scale" in results:
        lines += [
            "## Scale (N rows x 50 numeric columns, one process per stage as `dvc repro` runs them, one epoch)", "",
            "Seconds and peak PSS (MB, the stage's process tree) of each stage; the train stage's epoch against "
            "`bench/bare_stream.py train` streaming the same split through tf.data into the same model.", "",
            "| rows | " + " | ".join(STAGES) + " | s per M rows | peak PSS MB | epoch s | bare epoch s | epoch ratio |",
            "|---|" + "---|" * (len(STAGES) + 5),
        ]  # fmt: skip
        for rows, row in results["scale"].items():
            if rows.isdigit():
                cells = [
                    f"{row['stages'][name]['seconds']:.1f} ({row['stages'][name]['peak_pss_mb']:.0f})"
                    for name in STAGES
                ]
                lines.append(
                    f"| {int(rows):,} | " + " | ".join(cells) + f" | {row['seconds_per_million_rows']:.1f} | "
                    f"{row['peak_pss_mb']:.0f} | {row['train_epoch_s']:.1f} | {row['bare_stream_epoch_s']:.1f} | "
                    f"{row['epoch_over_bare']:.2f} |"
                )
        if "time_per_million_rows_ratio" in results["scale"]:
            growth = results["scale"]["time_per_million_rows_ratio"]
            lines.append(
                f"\nTime per million rows at {growth['rows'][1]:,} rows over {growth['rows'][0]:,}: "
                f"{growth['ratio']:.2f} (target <= 1.2); peak PSS target < 2048 MB in every stage; epoch ratio "
                "target <= 1.2."
            )
        lines.append("")
    if "images" in results:
        row = results["images"]
        lines += [
            f"## An image folder ({row['images']:,} generated {row['size'][0]}x{row['size'][1]} JPEGs, "
            f"{row['jpeg_mb']:.0f} MB; one process per stage, one epoch of a small CNN)", "",
            "- per stage, seconds (peak PSS MB): " + ", ".join(
                f"{name} {stage['seconds']:.1f} ({stage['peak_pss_mb']:.0f})" for name, stage in row["stages"].items()
            ),
            f"- peak PSS {row['peak_pss_mb']:.0f} MB (target < 2048); the widest Parquet file has "
            f"{row['widest_table_columns']} columns (no pixel columns), {row['parquet_mb']:.1f} MB of Parquet in all; "
            f"test accuracy {row['test_accuracy']:.3f} (three classes)", "",
        ]  # fmt: skip
    if "predict" in results:
        row = results["predict"]
        lines += [
            f"## Batch prediction ({row['rows']:,} rows x {row['columns']} columns, Parquet in and out)", "",
            f"- `kerasflow predict`: {row['kerasflow_rows_per_s']:,.0f} rows/s scoring (read, convert, predict, "
            f"drift, write: {row['kerasflow_scoring_s']:.1f} s; {row['kerasflow_wall_s']:.1f} s with start-up), "
            f"peak memory {row['kerasflow_peak_pss_mb']:.0f} MB (target < 1500)",
            f"- bare `model.predict` over the same rows in memory: {row['bare_rows_per_s']:,.0f} rows/s "
            f"({row['bare_predict_s']:.1f} s); the bare script reading, predicting and writing: "
            f"{row['bare_read_predict_write_s']:.1f} s; its peak memory {row['bare_peak_pss_mb']:.0f} MB",
            f"- `bench/bare_stream.py predict` (Parquet in batches, `predict_on_batch`, Parquet out): "
            f"{row['bare_stream_rows_per_s']:,.0f} rows/s ({row['bare_stream_s']:.1f} s), peak memory "
            f"{row['bare_stream_peak_pss_mb']:.0f} MB",
            f"- ratio against that streaming script {row['stream_ratio']:.2f} (target >= 0.9); against "
            f"`model.predict` alone, rows already in memory, {row['throughput_ratio']:.2f}; against the bare script "
            f"reading everything first {row['same_work_ratio']:.2f}", "",
        ]  # fmt: skip
    if "tune" in results:
        pruning, parallel, overhead = (results["tune"][key] for key in ("pruning", "parallel", "trial_overhead"))
        lines += [
            "## Tuning", "",
            f"- median pruning (house-prices TPE example, {sum(pruning['counts']['median'].values())} trials): "
            f"{pruning['epochs_median_pruner']} epochs against {pruning['epochs_no_pruner']} without pruning, "
            f"{pruning['epochs_saved_share']:.0%} fewer (target >= 30 %); "
            f"best val_loss {pruning['best_median_pruner']:.4f} against {pruning['best_no_pruner']:.4f}: "
            f"{abs(pruning['best_relative_difference']):.1%} "
            f"{'better' if pruning['best_relative_difference'] <= 0 else 'worse'} (target: no more than 1 % worse)",
            f"- {parallel['trials']} trials two at a time: {parallel['two_at_a_time_s']:.1f} s against "
            f"{parallel['one_at_a_time_s']:.1f} s one at a time, wall ratio {parallel['wall_ratio']:.2f} (2 cores)",
            f"- a trial (Prefect task, MLflow child run, data, build, {overhead['epochs']} epochs): "
            f"{overhead['trial_s_median']:.2f} s against {overhead['bare_data_build_fit_s']:.2f} s for the bare "
            f"script's data, build and fit: overhead {overhead['overhead_s']:.2f} s (target <= 1 s)", "",
        ]  # fmt: skip
    if "gpu_path" in results:
        lines += ["## GPU path", "", f"- here: {results['gpu_path']['here']}",
                  f"- on a GPU: {results['gpu_path']['on_a_gpu']}", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        choices=["throughput", "fixed_cost", "scale", "images", "predict", "tune", "workers", "quality", "gate"],
        action="append",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dataset for the quality benchmark")
    parser.add_argument("--datasets", default=None, help="quality: only these datasets (comma-separated)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="quality: a params change on top of what init writes, for every run (a recipe to try; repeatable)",
    )  # fmt: skip
    parser.add_argument("--worker-rows", type=int, default=400_000, help="rows for the training-across-workers bench")
    parser.add_argument("--images", type=int, default=20_000, help="generated JPEGs for the image-folder benchmark")
    parser.add_argument("--predict-rows", type=int, default=5_000_000, help="rows for the prediction benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sizes", default="1000000,3000000,10000000", help="rows for the scale benchmark")
    parser.add_argument("--output", default=str(RESULTS / "latest"), help="results path, without extension")
    args = parser.parse_args()
    if args.only == ["quality"]:
        return quality_section(args)
    if args.only == ["gate"]:
        return gate_section()
    chosen = args.only or ["throughput", "fixed_cost", "scale", "images", "predict", "tune", "workers"]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="kerasflow-bench-") as folder:
        work = Path(folder)
        if "throughput" in chosen:
            results["throughput"] = throughput(work, args.repeats, args.epochs)
        if "fixed_cost" in chosen:
            results["fixed_cost"] = fixed_cost(work, args.repeats, args.epochs)
        if "scale" in chosen:
            results["scale"] = scale(work, [int(rows) for rows in args.sizes.split(",")])
        if "images" in chosen:
            results["images"] = image_pipeline(work, args.images)
        if "predict" in chosen:
            results["predict"] = prediction(work, args.predict_rows)
        if "tune" in chosen:
            results["tune"] = tuning(work)
        if "workers" in chosen:
            results["workers"] = workers(work, args.worker_rows)
    results["gpu_path"] = gpu_path()
    results["benchmark_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    output.with_suffix(".md").write_text(report + "\n")
    sys.stdout.write(report + "\n")
    return 0


def quality_section(args: argparse.Namespace) -> int:
    """`--only quality`: its own results file (bench/results/quality.md and .json), for it runs apart."""
    from bench import quality

    date = time.strftime("%Y-%m-%d %H:%M")
    only = args.datasets.split(",") if args.datasets else None
    output = Path(args.output) if args.output != str(RESULTS / "latest") else RESULTS / "quality"
    with tempfile.TemporaryDirectory(prefix="kerasflow-quality-") as folder:
        results = quality.quality(Path(folder), ENV, args.seeds, only, args.overrides)
    output.parent.mkdir(parents=True, exist_ok=True)
    recorded = {"date": date, "machine": machine(), **({"overrides": args.overrides} if args.overrides else {})}
    output.with_suffix(".json").write_text(json.dumps({**recorded, **results}, indent=2) + "\n")
    report = quality.markdown(results, date, machine())
    if args.overrides:
        changes = " ".join(f"--set {change}" for change in args.overrides)
        report = report.replace("\n", f"\n\nEvery run with `{changes}` on init's params.\n", 1)
    output.with_suffix(".md").write_text(report + "\n")
    sys.stdout.write(report + "\n")
    return 0


def gate_section() -> int:
    """`--only gate`: how often each register.min_confidence moves the champion, and the bootstrap's cost
    (bench/results/gate.md and .json)."""
    from bench import gate

    date = time.strftime("%Y-%m-%d %H:%M")
    results = gate.gate()
    (RESULTS / "gate.json").write_text(json.dumps({"date": date, "machine": machine(), **results}, indent=2) + "\n")
    report = gate.markdown(results, date, machine())
    (RESULTS / "gate.md").write_text(report + "\n")
    sys.stdout.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
