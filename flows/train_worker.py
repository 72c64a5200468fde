"""One training worker: `kerasflow train-worker` (or `python -m flows.train_worker`), run once per worker.

TF_CONFIG names the cluster and this worker's place in it. The chief (worker 0, or the task of type
"chief") runs the train stage as one process would, recording to MLflow and publishing the model; every
other worker trains its shard in step and exits 0. `train.workers: N` starts N of these itself
(tasks/cluster.py); on Kubernetes each pod of deploy/kubernetes/train-workers.yaml runs one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kerasflow.overrides import override_options, params_options, parse_assignments
from kerasflow.runtime import configure_logging, quiet_defaults

logger = logging.getLogger("kerasflow")


def main(argv: list[str] | None = None) -> int:
    quiet_defaults()
    configure_logging()
    if os.environ.get("KERASFLOW_WORKER"):
        # Started by `train.workers: N`: the launcher stamps each line it passes on with its own time.
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    parser = argparse.ArgumentParser(
        prog="kerasflow train-worker", description=__doc__, parents=[params_options(), override_options()]
    )
    parser.add_argument("--root", default=".", help="the project folder every worker sees (default: here)")
    parser.add_argument("--project-root", default=None, help="where mlflow.db lives (default: --root)")
    parser.add_argument("--run-id", default=None, help="the MLflow run to record into (default: a new one)")
    parser.add_argument("--raw-dir", default=None, help="the raw dataset's folder (default: ROOT/data/raw)")
    parser.add_argument("--processed-dir", default=None, help="the splits' folder (default: ROOT/data/processed)")
    parser.add_argument("--schema", default=None, help="the recorded schema (default: ROOT/data/schema.json)")
    args = parser.parse_args(argv)

    from kerasflow.config import ConfigError, load_params
    from tasks import cluster

    try:
        params = load_params(args.params, parse_assignments(args.overrides))
        if params.train.distribute != "multi_worker":
            raise ConfigError(
                f"{args.params}: train.distribute is {params.train.distribute!r}; a training worker trains with "
                "train.distribute: multi_worker"
            )
        worker = cluster.read_tf_config()
        if params.train.workers and params.train.workers != worker.size:
            raise ConfigError(f"TF_CONFIG names {worker.size} workers but train.workers is {params.train.workers}")
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    # The strategy first: MultiWorkerMirroredStrategy must be made before any other TensorFlow work.
    from kerasflow.runtime import import_quietly

    import_quietly("tasks.train")
    cluster.strategy()
    from flows.stages import Context, train
    from kerasflow.layout import Layout

    root = Path(args.root).resolve()
    layout = Layout(root, raw_dir=args.raw_dir, processed_dir=args.processed_dir, schema=args.schema)
    context = Context(layout, Path(args.project_root or root).resolve(), args.run_id)
    try:
        if worker.chief:
            train.train_and_publish(params, context)
        else:
            train.train_shard(params, context)
    except Exception as error:
        trace = logger.isEnabledFor(logging.DEBUG)
        logger.error("worker %d failed: %s: %s", worker.index, type(error).__name__, error, exc_info=trace)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
