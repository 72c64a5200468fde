"""The accelerator plan: what the GPU-path switches (mixed precision, XLA, determinism, `tf.distribute`) resolve to
on this machine, and the strategy a model is built and fitted under.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasflow.config import ConfigError, TrainParams

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
        # Same seed, same data, same code: the same weights, bit for bit (on the CPU; see docs/reproduce.md for GPUs).
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
