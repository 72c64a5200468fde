"""Process-level set-up done by entry points only: the quiet environment, logging and seeds.

`QUIET_ENVIRONMENT` is the one definition of the environment kerasflow runs in: the command
line, the DVC stages and the Prefect flow (also when a worker starts it) call `quiet_defaults`,
and `scripts/env.sh` exports the same values for the shell (`python -m kerasflow.runtime`).
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import sys
import threading
from typing import Any

import numpy as np

# Telemetry off and TensorFlow's C++ start-up chatter down; users can override each.
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "true",  # "1" is not enough for MLflow
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow's own INFO lines (validating the input example, system-metrics notices) say nothing to act on.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Prefect shows (and sends to its UI) the logs of kerasflow's own modules too.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "kerasflow,flows,tasks",
    # ...and the same modules, used outside a flow run (DVC stages), log locally without complaint.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # The temporary server's first start on a new machine creates its database, which takes longer than
    # Prefect's 20 s on two slow cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
PROJECT_LOGGERS = ("kerasflow", "flows", "tasks")


def quiet_defaults() -> None:
    """Set the quiet environment for this process and its children, unless the user set otherwise."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def configure_logging(level: int = logging.INFO) -> None:
    """Plain-text logs on stderr for processes without Prefect (the DVC stages): kerasflow's INFO lines,
    other libraries' warnings."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_project_logs(level)


def show_project_logs(level: int = logging.INFO) -> None:
    """Let kerasflow's own INFO lines through (the root logger's WARNING would drop them), and keep
    one line per HTTP request to the Prefect or MLflow server out."""
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # Per-request lines, MLflow's "validating the input example" and system-metrics notices, TensorFlow's
    # "assets written": none says anything a user would act on.
    for noisy in ("httpx", "httpcore", "urllib3", "mlflow", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def attach_to_prefect_logging() -> None:
    """Send kerasflow's logs to the Prefect run's logs and console, as PREFECT_LOGGING_EXTRA_LOGGERS does.

    A flow run that a worker starts configures Prefect's logging before the flow's code can set
    that variable, so the flow attaches its loggers itself (once). Every handler also redacts passwords in URIs.
    """
    handlers = logging.getLogger("prefect.extra").handlers
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
    show_project_logs()
    redact_logged_credentials()


def redact_credentials(text: str) -> str:
    """A URI (or a message holding one) as it may be shown or stored: `http://user:***@host:5000` for
    `http://user:password@host:5000`."""
    import re

    return re.sub(r"(://[^:/@\s]+):[^@\s/]+@", r"\1:***@", text)


class RedactCredentials(logging.Filter):
    """On a handler: a password in a URI, in a record's message or its traceback, is replaced by `***` before the
    record is shown or sent (to the terminal and to Prefect's API, whose database keeps the logs). Prefect and
    MLflow log URIs of their own (a failed request names its URL), which kerasflow's own redaction cannot reach."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message and (clean := redact_credentials(message)) != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_credentials(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_credentials(record.exc_text)
        return True


def redact_logged_credentials(
    loggers: tuple[str, ...] = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.extra"),
) -> None:
    """Put `RedactCredentials` on every handler of these loggers (the console's and Prefect's API handler)."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(existing, RedactCredentials) for existing in handler.filters):
                handler.addFilter(RedactCredentials())


# TensorFlow's C++ start-up lines on a machine without a GPU. absl writes them before its logging is set up,
# so TF_CPP_MIN_LOG_LEVEL cannot hold them back, and none is something a user could act on.
NATIVE_START_UP_NOISE = (
    "absl::InitializeLog",
    "oneDNN custom operations are on",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "failed call to cuInit",
    "Unable to register cu",
    "computation_placer",
)


# One swap of file descriptor 2 at a time: it is the whole process's, so two overlapping swaps (stage runs on
# Prefect's worker threads, tuning trials on a thread pool) would leave stderr on a deleted temporary file.
_STDERR_SWAP = threading.Lock()
_QUIETED: set[str] = set()


def import_quietly(module: str) -> Any:
    """Import `module` (and, if that loads TensorFlow, let it look for GPUs) with TensorFlow's native start-up
    lines left out of stderr; every other line written meanwhile is passed on. Thread-safe: the swap of the
    process's stderr happens under a lock, and once per module."""
    import importlib

    with _STDERR_SWAP:
        if module in _QUIETED:
            return importlib.import_module(module)
        loaded = _import_with_stderr_filtered(module)
        _QUIETED.add(module)
        return loaded


def _import_with_stderr_filtered(module: str) -> Any:
    import importlib
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            loaded = importlib.import_module(module)
            if "tensorflow" in sys.modules:
                sys.modules["tensorflow"].config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(marker in line for marker in NATIVE_START_UP_NOISE):
                    sys.stderr.write(line)
    return loaded


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and (if imported) Keras/TensorFlow from one number."""
    random.seed(seed)
    np.random.seed(seed)
    import keras

    keras.utils.set_random_seed(seed)


def shell_exports() -> str:
    """The quiet environment as `export` lines, for `eval "$(python -m kerasflow.runtime)"`."""
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in QUIET_ENVIRONMENT.items())


if __name__ == "__main__":
    sys.stdout.write(shell_exports() + "\n")


# Watches its parent (the kerasflow command) and stops the temporary Prefect server when the parent is gone,
# also after a SIGKILL, which runs no clean-up of the parent's own.
WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(0.5)
for sent in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.kill(server, sent)
    except ProcessLookupError:
        break
    time.sleep(3)
"""


def start_temporary_prefect_server() -> None:
    """Without PREFECT_API_URL, start Prefect's temporary server now (Prefect then uses this one), with a watchdog
    that stops it if this process dies without stopping it itself (SIGKILL); and make SIGTERM a clean exit, in
    which Prefect stops the server and the MLflow run is marked KILLED."""
    import functools
    import signal
    import subprocess

    from prefect.settings import PREFECT_API_URL

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client will find and reuse
    # In a session of its own: Ctrl-C in the terminal interrupts the command, which then reports its flow run's
    # end to a server still up (in the terminal's process group the server died first, and every state the
    # flow reported failed with ConnectError for minutes). The watchdog and Prefect's exit stop it.
    popen = subprocess.Popen
    try:
        subprocess.Popen = functools.partial(popen, start_new_session=True)  # type: ignore[misc]
        server.start()
    finally:
        subprocess.Popen = popen  # type: ignore[misc]
    subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(server.server_process.pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
