"""The `tf.data` input pipelines: a split in memory sliced and shuffled, a split file streamed a row group at a
time through a shuffle buffer, a split file sharded across workers; and `predict`, a trained model's outputs
on raw rows through the same pipeline. Training, evaluation, tuning and batch scoring all read rows here.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
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


# Rows per batch when a trained model scores and no setting says otherwise (evaluate and tuning pass
# evaluate.batch_size): larger than training's batches for throughput; the scores do not depend on it.
SCORING_BATCH = 256


def predict(model: keras.Model, x: Any, inputs: ModelInputs, batch_size: int = SCORING_BATCH) -> np.ndarray:
    """The model's outputs on raw features in memory, or on a split file streamed (Keras' predict refuses NumPy
    strings, so it goes through tf.data)."""
    source = x if isinstance(x, ParquetSplit) else Split(x, np.zeros(len(x)))
    return np.asarray(model.predict(make_dataset(source, inputs, batch_size, labels=False), verbose=0))
