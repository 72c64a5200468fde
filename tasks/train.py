"""Train: `model.fit` on a tf.data pipeline with early stopping, checkpoints and resumable backups.

Tracking is not done here: the caller injects its callbacks (e.g. the MLflow per-epoch logger),
so this function is the same under Prefect, DVC, tuning trials and tests.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf

from kerasflow.config import ConfigError, TrainParams
from kerasflow.model_interface import NUMERIC_INPUT, ModelInputs, to_model_inputs
from kerasflow.tables import open_parquet
from tasks import images
from tasks.preprocess import LABEL, ParquetSplit, Split

logger = logging.getLogger(__name__)


def device_summary() -> dict[str, Any]:
    """Which devices TensorFlow will train on (GPU when it sees one)."""
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "device": "GPU" if gpus else "CPU",
        "gpus": len(gpus),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


@dataclass(frozen=True)
class AcceleratorPlan:
    """What the GPU-path switches resolve to on this machine (logged with the run as `train.*` tags)."""

    mixed_precision: str | bool  # mixed_float16 | mixed_bfloat16 | False
    jit_compile: bool | str  # True | False | "auto" (Keras decides)
    deterministic: bool
    strategy: str  # default | MirroredStrategy | MultiWorkerMirroredStrategy
    replicas: int
    devices: list[str]
    # Across workers: how many, and each replica's share of train.batch_size.
    workers: int | None = None
    per_replica_batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def accelerator_plan(params: TrainParams, string_inputs: bool = False) -> AcceleratorPlan:
    """What the GPU-path switches resolve to on this machine (logged with the run).

    Mixed precision computes in float16 on a GPU and in bfloat16 on a CPU (which has no fast
    float16). Models that take strings (categorical or text columns) train on one device: Keras'
    fit under MirroredStrategy averages the first batch across replicas, which fails on strings.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if params.distribute == "multi_worker":
        return multi_worker_plan(params, bool(gpus), string_inputs)
    devices = [device.name for device in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
    if string_inputs and params.distribute == "mirrored":
        raise ConfigError(
            "train.distribute: mirrored cannot train a model that takes strings (categorical or text columns); "
            "use auto or off"
        )
    mirrored = params.distribute == "mirrored" or (params.distribute == "auto" and len(gpus) > 1 and not string_inputs)
    mixed = bool(gpus) if params.mixed_precision == "auto" else params.mixed_precision
    return AcceleratorPlan(
        mixed_precision=("mixed_float16" if gpus else "mixed_bfloat16") if mixed else False,
        jit_compile=params.jit_compile,
        deterministic=(
            not gpus and params.jit_compile is not True if params.deterministic == "auto" else params.deterministic
        ),
        strategy="MirroredStrategy" if mirrored and len(devices) > 1 else "default",
        replicas=len(devices) if mirrored and len(devices) > 1 else 1,
        devices=devices if mirrored else devices[:1],
    )


def multi_worker_plan(params: TrainParams, gpus: bool, string_inputs: bool) -> AcceleratorPlan:
    """The plan of one worker of a multi-worker training (the strategy is made first: it must precede any other
    TensorFlow work); the run records the workers and the per-replica batch."""
    from tasks import cluster

    cluster.check(params, string_inputs)
    found = cluster.read_tf_config()  # this process is one worker (of train.workers, or of a cluster)
    strategy = cluster.strategy()
    replicas = int(strategy.num_replicas_in_sync)
    mixed = gpus if params.mixed_precision == "auto" else params.mixed_precision
    return AcceleratorPlan(
        mixed_precision=("mixed_float16" if gpus else "mixed_bfloat16") if mixed else False,
        jit_compile=False,
        deterministic=not gpus if params.deterministic == "auto" else params.deterministic,
        strategy="MultiWorkerMirroredStrategy",
        replicas=replicas,
        devices=[device.name for device in tf.config.list_logical_devices("GPU" if gpus else "CPU")],
        workers=found.size,
        per_replica_batch=cluster.per_replica_batch(params, replicas),
    )


def distribution_strategy(plan: AcceleratorPlan) -> tf.distribute.Strategy:
    """The strategy to build and fit the model under; set the precision policy and determinism to match."""
    keras.mixed_precision.set_global_policy(plan.mixed_precision or "float32")
    if plan.deterministic:
        # Same seed, same data, same code: the same weights, bit for bit (on the CPU; see the README for GPUs).
        tf.config.experimental.enable_op_determinism()
    else:
        # The switch is process-wide: turn it off again for a training that did not ask for it (TensorFlow
        # exports no public `disable`; this is the function `enable_op_determinism` sits beside).
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    if plan.strategy == "MirroredStrategy":
        return tf.distribute.MirroredStrategy(plan.devices)
    if plan.strategy == "MultiWorkerMirroredStrategy":
        from tasks import cluster

        return cluster.strategy()
    return tf.distribute.get_strategy()


def weights_digest(model: keras.Model) -> str:
    """sha256 of the model's weights, in order: equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for values in model.get_weights():
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def spans_workers(model: keras.Model) -> bool:
    return isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)


DataSource = Split | ParquetSplit
# Batches handed from the Python reader to tf.data at a time.
BLOCK_BATCHES = 32


def in_memory(source: DataSource, params: TrainParams) -> DataSource:
    """`source` read into memory when train.in_memory says so (auto: when it fits train.memory_budget_mb)."""
    if isinstance(source, Split) or params.in_memory is False or params.distribute == "multi_worker":
        return source
    if params.in_memory is True or source.decoded_bytes() <= params.memory_budget_mb * 2**20:
        return source.load()
    return source


def make_dataset(
    source: DataSource,
    inputs: ModelInputs,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    labels: bool = True,
    shuffle_buffer: int = 65536,
) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline over one split's raw features (and labels).

    A split in memory is sliced (and shuffled whole, reshuffled each epoch); a split file streams:
    its row groups in a seeded order each epoch, each read and turned into model inputs by
    `to_model_inputs` as it comes, through a shuffle buffer of `shuffle_buffer` rows.
    """
    if isinstance(source, ParquetSplit):
        return stream_dataset(source, inputs, batch_size, shuffle, seed, labels, shuffle_buffer)
    features = to_model_inputs(source.x, inputs)
    dataset = tf.data.Dataset.from_tensor_slices((features, source.y) if labels else features)
    if shuffle:
        dataset = dataset.shuffle(len(source), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def input_signature(inputs: ModelInputs, files: bool = False) -> Any:
    """The tf.data element spec of a batch of model inputs (an image folder's batches hold paths)."""
    if inputs.kind == "image":
        return tf.TensorSpec((None,), tf.string) if files else tf.TensorSpec((None, *inputs.shape), tf.float32)
    spec = {entry.input: tf.TensorSpec((None, 1), tf.string) for entry in inputs.strings}
    if inputs.numeric:
        spec[NUMERIC_INPUT] = tf.TensorSpec((None, len(inputs.numeric)), tf.float32)
    return spec


def stream_dataset(
    source: ParquetSplit,
    inputs: ModelInputs,
    batch_size: int,
    shuffle: bool,
    seed: int,
    labels: bool,
    shuffle_buffer: int,
    shard: tuple[int, int] | None = None,
    steps: int | None = None,
) -> tf.data.Dataset:
    """The split file's rows in batches: each epoch (each pass) reads the row groups in an order drawn from
    (seed, epoch), keeps a pool of up to `shuffle_buffer` rows across them, and hands out shuffled batches of
    the pool as it refills. Memory: a row group and the pool. An image folder's paths are decoded in parallel
    after the shuffle. With `shard` (index, count), only every count-th row group, from index on, is read (or,
    in a split of fewer row groups than that, every count-th row of each); with `steps`, each pass is exactly
    that many full batches (the rest of the shard is left for the pass)."""
    file = open_parquet(source.path)
    groups = np.arange(file.metadata.num_row_groups)
    by_rows = shard is not None and len(groups) < shard[1]
    if shard is not None and not by_rows:
        groups = groups[shard[0] :: shard[1]]
    passes = itertools.count()
    label_dtype = file.schema_arrow.field(LABEL).type

    def features_of(frame: pd.DataFrame) -> Any:
        if source.files:
            return images.absolute(source.image_root, frame["path"]).astype(str)
        return to_model_inputs(frame, inputs)

    def blocks() -> Iterator[Any]:
        rng = np.random.default_rng([seed, next(passes)]) if shuffle else None
        reader = open_parquet(source.path)
        pool: Any = None
        for group in rng.permutation(groups) if shuffle else groups:
            frame = reader.read_row_group(int(group)).to_pandas()
            if by_rows:
                frame = frame.iloc[shard[0] :: shard[1]]
            chunk = (features_of(frame.drop(columns=LABEL)), frame[LABEL].to_numpy())
            pool = chunk if pool is None else _concat(pool, chunk)
            rows = _rows(pool)
            keep = min(shuffle_buffer, rows) if shuffle else 0
            ready = (rows - keep) // batch_size * batch_size
            order = rng.permutation(rows) if shuffle else np.arange(rows)
            yield from _blocks(pool, order[:ready], batch_size, labels)
            pool = _take(pool, order[ready:])
        if pool is not None and _rows(pool):
            order = rng.permutation(_rows(pool)) if shuffle else np.arange(_rows(pool))
            yield from _blocks(pool, order, batch_size, labels)

    def block(spec: tf.TensorSpec) -> tf.TensorSpec:
        return tf.TensorSpec((None, *spec.shape), spec.dtype)

    spec = tf.nest.map_structure(block, input_signature(inputs, source.files))
    label_spec = tf.TensorSpec((None, None), tf.int64 if pa.types.is_integer(label_dtype) else tf.float32)
    # Each element the generator yields is a block of batches (calls into Python are the costly part); unbatched
    # here into batches.
    dataset = tf.data.Dataset.from_generator(blocks, output_signature=(spec, label_spec) if labels else spec)
    dataset = dataset.unbatch()
    if source.files:
        decode = functools.partial(images.load_image, shape=inputs.shape)
        if labels:
            dataset = dataset.unbatch().map(lambda path, y: (decode(path), y), num_parallel_calls=tf.data.AUTOTUNE)
        else:
            dataset = dataset.unbatch().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size)
    if steps is not None:
        dataset = dataset.take(steps)
    # Keras then knows the epoch's steps (and does not warn when the generator ends).
    rows = sum(file.metadata.row_group(int(group)).num_rows for group in groups) // (shard[1] if by_rows else 1)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps or -(-rows // batch_size)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def shard_steps(source: ParquetSplit, workers: int, worker_batch: int) -> int:
    """Full batches of `worker_batch` rows that every one of `workers` shards holds (every workers-th row group, or
    every workers-th row of each when there are fewer row groups than workers): each worker runs this many steps
    per epoch, so none waits at an all-reduce for another that has finished."""
    metadata = open_parquet(source.path).metadata
    groups = metadata.num_row_groups
    sizes = [metadata.row_group(group).num_rows for group in range(groups)]
    if groups < workers:
        rows = [sum(len(range(index, size, workers)) for size in sizes) for index in range(workers)]
    else:
        rows = [sum(sizes[index::workers]) for index in range(workers)]
    steps = min(rows) // worker_batch
    if steps == 0:
        raise ConfigError(
            f"{source.path.name}: {metadata.num_rows:,} rows in {groups} row group(s) give the smallest of {workers} "
            f"worker shards {min(rows):,} rows, less than one batch of {worker_batch} per worker; make "
            "train.batch_size smaller (it is the global batch) or train on fewer workers"
        )
    return steps


def sharded_dataset(
    strategy: tf.distribute.Strategy,
    source: ParquetSplit,
    inputs: ModelInputs,
    params: TrainParams,
    shuffle: bool,
    seed: int,
    class_weight: dict[int, float] | None = None,
) -> Any:
    """For training across workers: each worker streams only its shard of the split's row groups, in batches of
    the per-replica size, for the same number of steps as every other worker (tf.distribute's input function:
    no auto-sharding, no rebatching)."""
    from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn

    from tasks import cluster

    per_replica = cluster.per_replica_batch(params, strategy.num_replicas_in_sync)

    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        workers, index = context.num_input_pipelines, context.input_pipeline_id
        local_replicas = strategy.num_replicas_in_sync // workers
        steps = shard_steps(source, workers, per_replica * local_replicas) * local_replicas
        dataset = stream_dataset(
            source, inputs, per_replica, shuffle, seed, True, params.shuffle_buffer, (index, workers), steps
        )
        if class_weight is not None:
            dataset = dataset.map(make_class_weight_map_fn(class_weight))
        return dataset

    return strategy.distribute_datasets_from_function(worker_dataset)


def _rows(pool: tuple[Any, np.ndarray]) -> int:
    return len(pool[1])


def _take(pool: tuple[Any, np.ndarray], rows: np.ndarray) -> tuple[Any, np.ndarray]:
    x, y = pool
    if isinstance(x, dict):
        return {name: values[rows] for name, values in x.items()}, y[rows]
    return x[rows], y[rows]


def _concat(first: tuple[Any, np.ndarray], second: tuple[Any, np.ndarray]) -> tuple[Any, np.ndarray]:
    (x1, y1), (x2, y2) = first, second
    if isinstance(x1, dict):
        return {name: np.concatenate([x1[name], x2[name]]) for name in x1}, np.concatenate([y1, y2])
    return np.concatenate([x1, x2]), np.concatenate([y1, y2])


def _blocks(pool: tuple[Any, np.ndarray], order: np.ndarray, batch_size: int, labels: bool) -> Iterator[Any]:
    """The pool's rows `order`, in that order, as blocks of up to BLOCK_BATCHES full batches (arrays of shape (batches,
    batch_size, ...)), then any last partial batch as a block of one."""
    rows = len(order)
    full = rows // batch_size * batch_size

    def shaped(part: tuple[Any, np.ndarray], batches: int) -> Any:
        x, y = part
        fold = lambda values: values.reshape(batches, -1, *values.shape[1:])  # noqa: E731
        x = {name: fold(values) for name, values in x.items()} if isinstance(x, dict) else fold(x)
        return (x, fold(y)) if labels else x

    step = BLOCK_BATCHES * batch_size
    for start in range(0, full, step):
        chosen = order[start : min(full, start + step)]
        yield shaped(_take(pool, chosen), len(chosen) // batch_size)
    if full < rows:
        yield shaped(_take(pool, order[full:]), 1)


# Rows per batch when a trained model scores (evaluate, the champion's re-score, tuning): larger than training's
# batches for throughput; the scores do not depend on it.
SCORING_BATCH = 256


def predict(model: keras.Model, x: Any, inputs: ModelInputs, batch_size: int = SCORING_BATCH) -> np.ndarray:
    """The model's outputs on raw features in memory, or on a split file streamed (Keras' predict refuses NumPy
    strings, so it goes through tf.data)."""
    source = x if isinstance(x, ParquetSplit) else Split(x, np.zeros(len(x)))
    return np.asarray(model.predict(make_dataset(source, inputs, batch_size, labels=False), verbose=0))


def class_weights(
    setting: str | dict[str, float] | None, class_counts: np.ndarray | list[int] | None, classes: list[Any] | None
) -> dict[int, float] | None:
    """Keras `class_weight` from train.class_weight: null, "balanced" (scikit-learn's rule on the training rows'
    class counts; absent classes weigh 1), or {label: weight}."""
    if setting is None:
        return None
    if not classes:
        raise ConfigError("train.class_weight applies to classification only")
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        counts = np.zeros(len(classes), dtype="int64")
        given = np.asarray(class_counts if class_counts is not None else [], dtype="int64")[: len(classes)]
        counts[: len(given)] = given
        present = np.flatnonzero(counts)
        weights = np.ones(len(classes))
        if len(present):
            # scikit-learn's rule on the class indexes repeated by their counts: rows / (classes * rows of the
            # class). It refuses a class with no rows, so it sees the present ones (scaled to all classes) and an
            # absent class weighs 1.
            labels = np.repeat(present.astype("int32"), counts[present])
            found = compute_class_weight("balanced", classes=present, y=labels)
            weights[present] = found * len(present) / len(classes)
        return {index: float(weight) for index, weight in enumerate(weights)}
    names = [str(label) for label in classes]
    unknown = [label for label in setting if label not in names]
    if unknown:
        raise ConfigError(f"train.class_weight: labels {unknown} are not classes of the data {names[:20]}")
    return {index: float(setting.get(name, 1.0)) for index, name in enumerate(names)}


@dataclass(frozen=True)
class Backup:
    """What a killed training resumes from: a per-epoch backup for each phase and the epoch log.

    `head/` backs up the first phase and `fine_tune/` the second (Keras' BackupAndRestore, one
    per phase); when the first phase ends, its final weights and epoch count are kept as
    `head.weights.h5` and `head.json`, so a kill in either phase resumes that phase from its
    last finished epoch. The caller removes the folder once it has kept what training made.
    """

    folder: Path

    @property
    def epoch_log(self) -> Path:
        return self.folder / "epochs.csv"

    def phase_dir(self, phase: str) -> Path:
        return self.folder / phase

    @property
    def head_weights(self) -> Path:
        return self.folder / "head.weights.h5"

    @property
    def head_record(self) -> Path:
        return self.folder / "head.json"

    def head_epochs(self) -> int | None:
        """Epochs of a first phase that finished (None if it did not)."""
        if not (self.head_record.is_file() and self.head_weights.is_file()):
            return None
        return int(json.loads(self.head_record.read_text())["epochs"])

    def completed_epochs(self) -> int:
        """How many epochs (both phases) an interrupted attempt finished: 0 if there is nothing to resume."""
        done = [self.head_epochs() or 0]
        for phase in ("head", "fine_tune"):
            metadata = self.phase_dir(phase) / "training_metadata.json"
            if metadata.is_file():
                done.append(int(json.loads(metadata.read_text())["epoch"]))
        return max(done)

    def finish_head(self, model: keras.Model, epochs: int) -> None:
        self.head_weights.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(self.head_weights)
        self.head_record.write_text(json.dumps({"epochs": epochs}))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class EpochProgress(keras.callbacks.Callback):
    """One INFO line per epoch (loss, metrics, seconds), so a long run is never silent."""

    def __init__(self, epochs: int, label: str = "") -> None:
        super().__init__()
        self.epochs = epochs
        self.prefix = f"{label}: " if label else ""
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = "  ".join(
            f"{name} {float(value):.4g}" for name, value in (logs or {}).items() if name != "learning_rate"
        )
        seconds = time.perf_counter() - self.started
        logger.info("%sepoch %d/%d  %s  (%.1f s)", self.prefix, epoch + 1, self.epochs, values, seconds)


def training_callbacks(
    params: TrainParams,
    checkpoint_path: Path | None,
    backup_dir: Path | None,
    injected: Sequence[keras.callbacks.Callback] = (),
    epoch_log: Path | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks params.yaml asks for, the caller's, then per-epoch log and backup (last, so an
    epoch is logged before the backup says it is done)."""
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    stopping = params.early_stopping
    if stopping.enabled:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=stopping.monitor,
                patience=stopping.patience,
                min_delta=stopping.min_delta,
                restore_best_weights=stopping.restore_best_weights,
                start_from_epoch=stopping.start_from_epoch,
            )
        )
    reduce = params.reduce_learning_rate
    if reduce.enabled:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=stopping.monitor,
                factor=reduce.factor,
                patience=reduce.patience,
                min_lr=reduce.min_learning_rate,
                verbose=0,
            )
        )
    if params.checkpoint and checkpoint_path is not None:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(checkpoint_path), monitor=stopping.monitor, save_best_only=True, save_weights_only=True
            )
        )
    callbacks.extend(injected)
    if epoch_log is not None:
        epoch_log.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.CSVLogger(str(epoch_log), append=True))
    if backup_dir is not None:
        # Kept after the phase ends (the caller removes the folder): see `Backup`. Two copies, so a kill
        # while one is being written leaves the other to resume from.
        callbacks.append(
            keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False, double_checkpoint=True)
        )
    return callbacks


def train_model(
    model: keras.Model,
    train_split: DataSource,
    val_split: DataSource,
    inputs: ModelInputs,
    params: TrainParams,
    seed: int,
    checkpoint_path: Path | None = None,
    backup_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    class_weight: dict[int, float] | None = None,
    fine_tune: Callable[[keras.Model], None] | None = None,
    label: str = "",
) -> dict[str, list[float]]:
    """Fit `model`; return the per-epoch history (loss, metrics, val_*) of the epochs run here.

    With `train.fine_tune.epochs`, `fine_tune` (which unfreezes and recompiles the model) runs
    after the first phase, and training goes on for those epochs. With `backup_dir`, a killed
    attempt resumes either phase from its last finished epoch (see `Backup`); the backup stays
    until the caller removes it, so a failure after training does not cost the training. `label`
    starts each epoch's log line (a tuning trial's number).
    """
    if len(train_split) == 0 or len(val_split) == 0:
        raise ValueError("train and validation splits must not be empty")
    keras.utils.set_random_seed(seed)
    backup = Backup(backup_dir) if backup_dir is not None else None
    train_split, val_split = in_memory(train_split, params), in_memory(val_split, params)
    buffer = params.shuffle_buffer
    if spans_workers(model):
        strategy = model.distribute_strategy
        assert isinstance(train_split, ParquetSplit) and isinstance(val_split, ParquetSplit)
        train_data = sharded_dataset(strategy, train_split, inputs, params, params.shuffle, seed, class_weight)
        val_data = sharded_dataset(strategy, val_split, inputs, params, False, seed)
        class_weight = None  # in the workers' datasets, as sample weights
    else:
        train_data = make_dataset(train_split, inputs, params.batch_size, params.shuffle, seed, shuffle_buffer=buffer)
        val_data = make_dataset(val_split, inputs, params.batch_size, False, seed)
    injected = [*callbacks, EpochProgress(params.epochs + (params.fine_tune.epochs if fine_tune else 0), label)]

    def fit(phase: str, first_epoch: int, epochs: int, checkpoint: Path | None) -> dict[str, list[float]]:
        history = model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=first_epoch,
            epochs=epochs,
            callbacks=training_callbacks(
                params,
                checkpoint,
                backup.phase_dir(phase) if backup else None,
                injected,
                backup.epoch_log if backup else None,
            ),
            class_weight=class_weight,
            shuffle=False,  # The tf.data pipeline shuffles.
            verbose=0,
        )
        # BackupAndRestore leaves a restored start epoch on the model; the next phase sets its own.
        model._initial_epoch = None
        return {name: [float(value) for value in values] for name, values in history.history.items()}

    head_epochs = backup.head_epochs() if backup else None
    if head_epochs is None:
        result = fit("head", 0, params.epochs, checkpoint_path)
        head_epochs = (backup.completed_epochs() if backup else 0) or len(result.get("loss", []))
        if backup:
            backup.finish_head(model, head_epochs)
    else:
        # The first phase finished in an earlier attempt: start fine-tuning from its final weights. (The
        # optimizer is built as fit would have, so the saved model carries a complete training state.)
        model.load_weights(backup.head_weights)
        model.optimizer.build(model.trainable_variables)
        result = {}
    if params.fine_tune.epochs and fine_tune is not None:
        fine_tune(model)
        more = fit("fine_tune", head_epochs, head_epochs + params.fine_tune.epochs, None)
        for name, values in more.items():
            result.setdefault(name, []).extend(values)
    if spans_workers(model):
        # Every worker logs this; the launcher checks they agree (tasks/cluster.py).
        logger.info("final weights sha256 %s", weights_digest(model))
    losses = result.get("loss", [])
    if losses and not np.all(np.isfinite(losses)):
        raise FloatingPointError("training stopped: the loss became NaN or infinite (TerminateOnNaN)")
    logger.info(
        "%strained %d epoch(s) here; final loss %s",
        f"{label}: " if label else "",
        len(losses),
        f"{losses[-1]:.4f}" if losses else "n/a",
    )
    return result
