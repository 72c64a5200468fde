"""Keras 3 `fit` under `tf.distribute.MultiWorkerMirroredStrategy`: the one workaround it needs.

Upstream: keras-team/keras#20585 (open; the maintainers call Keras 3 with MultiWorkerMirroredStrategy
unsupported). Keras' TensorFlow trainer fails twice when the strategy spans workers:

- before the first step it builds the model on a sample batch, which it gets by
  `strategy.reduce("MEAN", batch, axis=None)` over the whole (x, y) structure: a cross-worker collective
  that refuses a nested structure (and any string). The workaround builds on this worker's own first
  batch, with no collective;
- after each step it reduces the logs with `strategy.reduce("MEAN", value, axis=0)`; the logs are
  scalars (the metrics' synchronised results), which have no axis 0. The workaround reduces each value
  on its own with `axis=None` (the mean across replicas: for a synchronised metric, its value).

Everything else goes to Keras' own code.

`tests/unit/test_keras_multiworker.py` runs two real worker processes both ways: it fails when the
workaround stops working, and when Keras no longer needs it (then delete this module).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import tensorflow as tf

_lock = threading.Lock()


def _spans_workers(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def install() -> None:
    """Patch Keras' `reduce_per_replica` once per process (a no-op after the first call)."""
    from keras.src.backend.tensorflow import trainer

    with _lock:
        original = trainer.reduce_per_replica
        if getattr(original, "kerasflow_workaround", False):
            return

        @functools.wraps(original)
        def reduce_per_replica(values: Any, strategy: tf.distribute.Strategy, reduction: str) -> Any:
            if reduction in ("auto", "mean") and _spans_workers(strategy):
                return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
            return original(values, strategy, reduction)

        build = trainer.TensorFlowTrainer._maybe_symbolic_build

        @functools.wraps(build)
        def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
            if iterator is None or not _spans_workers(self.distribute_strategy):
                return build(self, iterator=iterator, data_batch=data_batch)
            local = self.distribute_strategy.experimental_local_results
            for _, _, batches in iterator:
                first = next(batches)
                return build(self, data_batch=tf.nest.map_structure(lambda value: local(value)[0], first))
            return build(self)

        reduce_per_replica.kerasflow_workaround = True  # type: ignore[attr-defined]
        trainer.reduce_per_replica = reduce_per_replica
        trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
