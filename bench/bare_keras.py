"""A bare Keras script, written the way the tutorials write it, doing the same work as the pipeline.

Reads the same processed splits (or loads and splits the data itself with --from-source),
builds the same network by hand, fits with the same batch size, epochs and seed, and
prints one JSON line: epoch end times, the test accuracy and the wall time of each part.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STARTED = time.perf_counter()

import keras  # noqa: E402
import numpy as np  # noqa: E402

IMPORTED = time.perf_counter()


def digits_cnn(scale: float) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(scale),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", kernel_regularizer=keras.regularizers.L1L2(l2=1e-4)),
            keras.layers.Dropout(0.4),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def tabular_mlp(mean: np.ndarray, variance: np.ndarray, outputs: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((mean.shape[0],)),
            keras.layers.Normalization(mean=mean, variance=variance),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(outputs, activation="softmax" if outputs > 1 else "sigmoid"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["digits_cnn", "tabular_mlp"], required=True)
    parser.add_argument("--processed", help="folder with the pipeline's processed splits (train.parquet, ...)")
    parser.add_argument("--from-source", action="store_true", help="load scikit-learn's digits and split here")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save", help="where to save the trained model (.keras)")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    if args.from_source:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = digits.images.astype("float32")[..., None]
        x_rest, x_test, y_rest, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=args.seed)
        x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.1, random_state=args.seed)
    else:

        def load(name: str) -> tuple[np.ndarray, np.ndarray]:
            # The pipeline keeps each split as one Parquet file: the raw feature columns and the encoded label.
            import pandas as pd

            table = pd.read_parquet(Path(args.processed) / f"{name}.parquet")
            x = table.drop(columns="__label__").to_numpy(dtype="float32")
            return (x.reshape(len(x), 8, 8, 1) if args.model == "digits_cnn" else x), table["__label__"].to_numpy()

        (x_train, y_train), (x_val, y_val), (x_test, y_test) = load("train"), load("val"), load("test")
    loaded = time.perf_counter()

    if args.model == "digits_cnn":
        model = digits_cnn(1.0 / float(np.abs(x_train).max()))
    else:
        flat = x_train.reshape(len(x_train), -1)
        model = tabular_mlp(flat.mean(axis=0), np.maximum(flat.var(axis=0), 1e-12), int(y_train.max()) + 1)
    outputs = model.output_shape[-1]
    loss = "sparse_categorical_crossentropy" if outputs > 1 else "binary_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])

    built = time.perf_counter()
    epoch_ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epoch_ends.append(time.perf_counter()))
    fit_started = time.perf_counter()
    model.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=(x_val, y_val), callbacks=[timer], verbose=0,
    )  # fmt: skip
    trained = time.perf_counter()
    probabilities = model.predict(x_test, verbose=0)
    predicted = probabilities.argmax(axis=1) if outputs > 1 else (probabilities.ravel() >= 0.5).astype(int)
    accuracy = float((predicted == y_test).mean())
    if args.save:
        model.save(args.save)
    finished = time.perf_counter()
    print(
        json.dumps(
            {
                "train_rows": len(y_train),
                "epoch_seconds": np.diff([fit_started, *epoch_ends]).tolist(),
                "accuracy": accuracy,
                "parts": {
                    "imports": IMPORTED - STARTED,
                    "data": loaded - IMPORTED,
                    "build": built - loaded,
                    "training": trained - fit_started,
                    "evaluation_and_save": finished - trained,
                },
                "wall_in_process": finished - STARTED,
            }
        )
    )


if __name__ == "__main__":
    main()
