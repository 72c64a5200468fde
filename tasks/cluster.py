"""Training across workers: the cluster from TF_CONFIG, each worker's shard, and N local workers.

`train.distribute: multi_worker` trains under TensorFlow's `MultiWorkerMirroredStrategy` (collective
all-reduce over gRPC). Each worker is one process running `kerasflow train-worker` with `TF_CONFIG`
naming the cluster and its own place in it: on Kubernetes one pod per worker (deploy/kubernetes/), on
one machine `train.workers: N` (this module's `launch`), which starts N workers on free ports (they reach
each other on loopback; TensorFlow's server listens on every interface) and waits for them all. Worker 0
(or the task of type "chief") is the chief: it alone records to MLflow and publishes the model; the
others train their shard and exit.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasflow.config import ConfigError, TrainParams
from kerasflow.errors import ExpectedError

logger = logging.getLogger(__name__)

# Lines of each worker's output kept to name what it said last when it fails.
LAST_LINES = 20
# What each worker logs when training ends (tasks/train.py), followed by the sha256 of its weights.
WEIGHTS_LINE = "final weights sha256"
# How long the other workers get to stop (SIGTERM) once one has failed, before SIGKILL.
STOP_SECONDS = 10.0


class WorkerFailed(ExpectedError, RuntimeError):
    """A training worker exited non-zero; the message names it, how it ended and its last lines."""


@dataclass(frozen=True)
class Cluster:
    """The workers (host:port each), this process's index among them, and whether it is the chief."""

    workers: tuple[str, ...]
    index: int
    chief: bool

    @property
    def size(self) -> int:
        return len(self.workers)


def read_tf_config(text: str | None = None) -> Cluster:
    """The cluster `TF_CONFIG` describes, checked: a JSON object with `cluster` (a "worker" list of host:port, and
    optionally one "chief") and `task` ({"type": "worker" or "chief", "index": N} within the list)."""
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ConfigError(
            "train.distribute: multi_worker needs TF_CONFIG (the cluster and this worker's place in it), or "
            "train.workers: N to start N local workers"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not JSON ({error.msg} at character {error.pos}): {text[:200]!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ConfigError(
            'TF_CONFIG must be an object with "cluster" and "task", e.g. {"cluster": {"worker": ["host0:port", '
            '"host1:port"]}, "task": {"type": "worker", "index": 0}}'
        )
    jobs = config["cluster"]
    unknown = sorted(set(jobs) - {"worker", "chief"})
    if unknown:
        raise ConfigError(f"TF_CONFIG cluster has jobs {unknown}; kerasflow trains with 'worker' (and 'chief') only")
    for job, addresses in jobs.items():
        if not isinstance(addresses, list) or not addresses or not all(_is_address(item) for item in addresses):
            raise ConfigError(f"TF_CONFIG cluster.{job} must be a non-empty list of 'host:port', got {addresses!r}")
    if len(jobs.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG cluster.chief holds one address, got {len(jobs['chief'])}")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in jobs:
        raise ConfigError(f"TF_CONFIG task.type must be one of {sorted(jobs)}, got {task!r}")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs[task["type"]]):
        raise ConfigError(
            f"TF_CONFIG task.index must be an integer from 0 to {len(jobs[task['type']]) - 1}, got {index!r}"
        )
    ordered = (*jobs.get("chief", []), *jobs.get("worker", []))
    position = index + (len(jobs.get("chief", [])) if task["type"] == "worker" else 0)
    return Cluster(tuple(ordered), position, chief=position == 0)


def _is_address(item: Any) -> bool:
    if not isinstance(item, str):
        return False
    host, separator, port = item.rpartition(":")
    return bool(host and separator and port.isdigit() and 0 < int(port) < 65536)


def check(params: TrainParams, string_inputs: bool | None = None) -> Cluster | None:
    """The entry point's check of train.distribute: multi_worker (params.yaml refuses XLA with it already): what
    cannot work is refused by name. With train.workers this process launches the workers (None); without, it
    is one of them (its Cluster, from TF_CONFIG)."""
    if params.distribute != "multi_worker":
        return None
    if string_inputs:
        raise ConfigError(
            "train.distribute: multi_worker cannot train a model that takes strings (categorical or text columns): "
            "Keras' distributed training step averages each batch across replicas, which fails on strings"
        )
    if params.workers is not None:
        return None
    return read_tf_config()


def per_replica_batch(params: TrainParams, replicas: int) -> int:
    """train.batch_size is the global batch: split evenly across the replicas of every worker."""
    if params.batch_size % replicas:
        raise ConfigError(
            f"train.batch_size {params.batch_size} is the global batch and must divide evenly among the "
            f"{replicas} replicas of train.distribute: multi_worker"
        )
    return params.batch_size // replicas


def strategy() -> Any:
    """The process's one MultiWorkerMirroredStrategy, made before any other TensorFlow work (it must be) with the
    Keras workaround installed (tasks/keras_multiworker.py)."""
    global _strategy
    if _strategy is None:
        import tensorflow as tf

        from tasks import keras_multiworker

        keras_multiworker.install()
        _strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return _strategy


_strategy: Any = None


def free_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out on 127.0.0.1 (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for item in sockets:
            item.bind(("127.0.0.1", 0))
        return [item.getsockname()[1] for item in sockets]
    finally:
        for item in sockets:
            item.close()


def tf_config(addresses: Sequence[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


class _Worker:
    """One launched worker: its process and the last lines it printed (the chief's are logged as they come)."""

    def __init__(self, index: int, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.index = index
        self.lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.weights: str | None = None
        # In the launcher's process group (a signal to the group reaches every worker), and killed when the
        # launcher dies however it dies, so no worker trains on, orphaned, and publishes afterwards.
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
        )
        self.reader = threading.Thread(target=self._read, name=f"worker-{index}-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip()
            self.lines.append(line)
            if WEIGHTS_LINE in line:
                self.weights = line.rsplit(" ", 1)[-1]
            if self.index == 0 and line:
                logger.info("worker 0 | %s", line)

    def ended(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def stop(self, sig: int) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass


def _die_with_parent() -> None:
    """In the child, before it runs: SIGKILL it when its parent exits (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def launch(workers: int, arguments: list[str], cwd: Path, poll_seconds: float = 0.2) -> None:
    """Run `python -m flows.train_worker ARGUMENTS` as `workers` processes on free loopback ports, each with its
    TF_CONFIG, and wait for them all. When one fails the others are stopped and WorkerFailed names it."""
    ports = free_ports(workers)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    # The workers reach each other on loopback, but TensorFlow's gRPC server binds every interface (fixed in its
    # C++ server, no setting): say so rather than imply the ports are private.
    logger.info(
        "starting %d training workers on ports %s (TensorFlow listens on every interface: keep these ports "
        "behind a firewall on a shared host)",
        workers,
        ", ".join(map(str, ports)),
    )
    started: list[_Worker] = []
    try:
        for index in range(workers):
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, index), "KERASFLOW_WORKER": str(index)}
            command = [sys.executable, "-m", "flows.train_worker", *arguments]
            started.append(_Worker(index, command, env, cwd))
        while True:
            failed = [worker for worker in started if worker.process.poll() not in (None, 0)]
            if failed:
                raise _failure(failed[0], started)
            if all(worker.process.returncode == 0 for worker in started):
                break
            time.sleep(poll_seconds)
        for worker in started:
            worker.reader.join(timeout=5)
        digests = {worker.index: worker.weights for worker in started}
        if len(set(digests.values())) == 1 and None not in digests.values():
            logger.info("all %d workers ended with the same weights (sha256 %s)", workers, digests[0])
        else:
            logger.warning("the workers ended with different weights: %s", digests)
    finally:
        _stop_all(started)


def _failure(first: _Worker, everyone: list[_Worker]) -> WorkerFailed:
    _stop_all(everyone)
    first.reader.join(timeout=5)
    said = "\n".join(f"    {line}" for line in first.lines if line) or "    (nothing)"
    return WorkerFailed(
        f"training worker {first.index} of {len(everyone)} {first.ended()}; the other workers were stopped. "
        f"Its last lines:\n{said}"
    )


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.stop(signal.SIGKILL)
            worker.process.wait()
