"""Bare streaming scripts, written as a careful engineer would by hand, doing the same work as kerasflow on data
larger than memory.

    python bench/bare_stream.py train --processed data/processed --epochs 1 --batch-size 256
    python bench/bare_stream.py predict --model models/model.keras --input new.parquet --output out.parquet

`train` streams the pipeline's train.parquet through tf.data (row groups in a seeded order, each
shuffled, cut into batches in NumPy, prefetched), validating on val.parquet each epoch,
into the same MLP (Normalization with the constants preprocess
fitted, 64 and 32 relu units, a sigmoid or softmax) and prints the epoch times. `predict` reads a Parquet
file in batches, calls `model.predict_on_batch` and writes the probabilities as Parquet, batch by batch.
Each prints one JSON line.
"""

from __future__ import annotations

import argparse
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
    folder = Path(args.processed)
    state = json.loads((folder / "state.json").read_text())
    numeric = state["fitted"]["numeric"]
    columns = list(numeric)
    mean = np.array([numeric[name]["mean"] for name in columns], dtype="float32")
    variance = np.array([numeric[name]["variance"] for name in columns], dtype="float32")
    classes = len(state["classes"])
    keras.utils.set_random_seed(args.seed)
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
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    rows = pq.ParquetFile(folder / "train.parquet").metadata.num_rows

    def stream(name: str, shuffle: bool) -> tf.data.Dataset:
        passes = iter(range(10**9))

        def batches():
            # Row groups in a seeded order, each shuffled and cut into batches.
            rng = np.random.default_rng([args.seed, next(passes)])
            reader = pq.ParquetFile(folder / f"{name}.parquet")
            groups = range(reader.num_row_groups)
            for group in rng.permutation(reader.num_row_groups) if shuffle else groups:
                table = reader.read_row_group(int(group))
                x = np.column_stack([table.column(column).to_numpy() for column in columns]).astype("float32")
                y = table.column(LABEL).to_numpy()
                order = rng.permutation(len(y)) if shuffle else np.arange(len(y))
                for start in range(0, len(y), args.batch_size):
                    chosen = order[start : start + args.batch_size]
                    yield x[chosen], y[chosen]

        signature = (tf.TensorSpec((None, len(columns)), tf.float32), tf.TensorSpec((None,), tf.int64))
        return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(tf.data.AUTOTUNE)

    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    started = time.perf_counter()
    model.fit(
        stream("train", True), validation_data=stream("val", False), epochs=args.epochs, callbacks=[timer], verbose=0
    )
    return {"train_rows": rows, "epoch_seconds": np.diff([started, *ends]).tolist()}


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
