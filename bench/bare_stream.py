"""Bare streaming scripts, written as a careful engineer would by hand, doing the same work as kerasflow on data
larger than memory.

    python bench/bare_stream.py train --processed data/processed --epochs 1 --batch-size 256
    python bench/bare_stream.py predict --model models/model.keras --input new.parquet --output out.parquet
    python bench/bare_stream.py train ... --worker 0 --ports 5000,5001   # and --worker 1 ...: two workers

With --worker and --ports, `train` is one worker of a MultiWorkerMirroredStrategy training (the cluster on
those loopback ports): it reads every n-th row group, in batches of batch-size / n, the same number of full
batches as every other worker, with kerasflow's 20-line Keras workaround (tasks/keras_multiworker.py: bare Keras
3 cannot fit under this strategy), and times the all-reduce of a tensor the size of the model's weights.

`train` streams the pipeline's train.parquet through tf.data (row groups in a seeded order, each
shuffled, cut into batches in NumPy, prefetched), validating on val.parquet each epoch,
into the same MLP (Normalization with the constants preprocess
fitted, 64 and 32 relu units, a sigmoid or softmax) and prints the epoch times. `predict` reads a Parquet
file in batches, calls `model.predict_on_batch` and writes the probabilities as Parquet, batch by batch.
Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from pathlib import Path

STARTED = time.perf_counter()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402

LABEL = "__label__"


def train(args: argparse.Namespace) -> dict:
    strategy = None
    if args.ports:
        import os
        import sys

        ports = args.ports.split(",")
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                "task": {"type": "worker", "index": args.worker},
            }
        )
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tasks import keras_multiworker

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        keras_multiworker.install()
    workers = strategy.num_replicas_in_sync if strategy else 1
    batch_size = args.batch_size // workers
    folder = Path(args.processed)
    state = json.loads((folder / "state.json").read_text())
    numeric = state["fitted"]["numeric"]
    columns = list(numeric)
    mean = np.array([numeric[name]["mean"] for name in columns], dtype="float32")
    variance = np.array([numeric[name]["variance"] for name in columns], dtype="float32")
    classes = len(state["classes"])
    keras.utils.set_random_seed(args.seed)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    scope.__enter__()
    model = keras.Sequential(
        [
            keras.Input((len(columns),)),
            keras.layers.Normalization(mean=mean, variance=variance),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(classes if classes > 2 else 1, activation="softmax" if classes > 2 else "sigmoid"),
        ]
    )
    loss = "sparse_categorical_crossentropy" if classes > 2 else "binary_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    scope.__exit__(None, None, None)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    rows = pq.ParquetFile(folder / "train.parquet").metadata.num_rows

    def stream(name: str, shuffle: bool, index: int = 0) -> tf.data.Dataset:
        passes = iter(range(10**9))
        metadata = pq.ParquetFile(folder / f"{name}.parquet").metadata
        mine = np.arange(index, metadata.num_row_groups, workers)
        shard_rows = [
            sum(metadata.row_group(int(group)).num_rows for group in range(worker, metadata.num_row_groups, workers))
            for worker in range(workers)
        ]

        def batches():
            # Row groups in a seeded order, each shuffled and cut into batches.
            rng = np.random.default_rng([args.seed, next(passes)])
            reader = pq.ParquetFile(folder / f"{name}.parquet")
            for group in rng.permutation(mine) if shuffle else mine:
                table = reader.read_row_group(int(group))
                x = np.column_stack([table.column(column).to_numpy() for column in columns]).astype("float32")
                y = table.column(LABEL).to_numpy()
                order = rng.permutation(len(y)) if shuffle else np.arange(len(y))
                for start in range(0, len(y), batch_size):
                    chosen = order[start : start + batch_size]
                    yield x[chosen], y[chosen]

        signature = (tf.TensorSpec((None, len(columns)), tf.float32), tf.TensorSpec((None,), tf.int64))
        dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
        if strategy:  # the same number of full batches on every worker
            dataset = dataset.filter(lambda x, y: tf.shape(y)[0] == batch_size).take(min(shard_rows) // batch_size)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def data(name: str, shuffle: bool):
        if strategy is None:
            return stream(name, shuffle)
        return strategy.distribute_datasets_from_function(
            lambda context: stream(name, shuffle, context.input_pipeline_id)
        )

    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    started = time.perf_counter()
    model.fit(data("train", True), validation_data=data("val", False), epochs=args.epochs, callbacks=[timer], verbose=0)
    report = {"train_rows": rows, "workers": workers, "epoch_seconds": np.diff([started, *ends]).tolist()}
    if strategy:
        report.update(all_reduce(strategy, model, args.batch_size, rows))
    return report


def all_reduce(strategy, model, batch_size: int, rows: int, repeats: int = 50) -> dict:
    """Seconds per all-reduce of a tensor the size of the model's trainable weights (what each step's gradient
    all-reduce moves), and the bytes a ring all-reduce sends per worker per step."""
    size = int(sum(np.prod(variable.shape) for variable in model.trainable_variables))

    @tf.function
    def reduce_once():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("SUM", tf.ones((size,))))

    reduce_once()
    started = time.perf_counter()
    for _ in range(repeats):
        reduce_once()
    seconds = (time.perf_counter() - started) / repeats
    workers = strategy.num_replicas_in_sync
    return {
        "weights": size,
        "all_reduce_s": seconds,
        "steps_per_epoch": rows // batch_size,
        "all_reduce_bytes_per_step": 2 * (workers - 1) / workers * size * 4,
    }


def predict(args: argparse.Namespace) -> dict:
    model = keras.saving.load_model(args.model, safe_mode=True, compile=False)
    file = pq.ParquetFile(args.input)
    columns = file.schema_arrow.names
    model.predict_on_batch({"numeric": np.zeros((args.batch_rows, len(columns)), "float32")})  # traced once
    started = time.perf_counter()
    writer = None
    rows = 0
    for batch in file.iter_batches(batch_size=args.batch_rows):
        x = np.column_stack([batch.column(index).to_numpy() for index in range(batch.num_columns)]).astype("float32")
        outputs = np.asarray(model.predict_on_batch({"numeric": x}))
        table = pa.table({"probability": outputs.reshape(len(x), -1)[:, -1]})
        writer = writer or pq.ParquetWriter(args.output, table.schema)
        writer.write_table(table)
        rows += len(x)
    writer.close()
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train")
    training.add_argument("--processed", required=True)
    training.add_argument("--epochs", type=int, default=1)
    training.add_argument("--batch-size", type=int, default=256)
    training.add_argument("--seed", type=int, default=42)
    training.add_argument("--deterministic", action="store_true", help="op determinism, as kerasflow on a CPU")
    training.add_argument("--worker", type=int, default=0, help="this worker's index (with --ports)")
    training.add_argument("--ports", default=None, help="the workers' loopback ports, comma-separated")
    scoring = commands.add_parser("predict")
    scoring.add_argument("--model", required=True)
    scoring.add_argument("--input", required=True)
    scoring.add_argument("--output", required=True)
    scoring.add_argument("--batch-rows", type=int, default=65536)
    args = parser.parse_args()
    report = train(args) if args.command == "train" else predict(args)
    print(json.dumps({**report, "wall_in_process": time.perf_counter() - STARTED}))


if __name__ == "__main__":
    main()
