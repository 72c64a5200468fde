"""Process-level set-up done by entry points only: quiet defaults and seeds."""

from __future__ import annotations

import logging
import os
import random

import numpy as np

# Telemetry off and TensorFlow's C++ start-up chatter down; users can still override each.
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "true",  # "1" is not enough for MLflow
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GIT_PYTHON_REFRESH": "quiet",
    # Prefect shows (and sends to its UI) the logs of kerasflow's own modules too.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "kerasflow,flows,tasks",
    # ...and the same modules, used outside a flow run (DVC stages), log locally without complaint.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def quiet_defaults() -> None:
    """Turn telemetry off for this process and its children, unless the user set otherwise."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per HTTP request to the Prefect or MLflow server is noise, not news.
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and (if imported) Keras/TensorFlow from one number."""
    random.seed(seed)
    np.random.seed(seed)
    import keras

    keras.utils.set_random_seed(seed)
