"""Expected failures (bad params, bad data, missing files, a schema mismatch, an unreachable server) and how the
terminal shows them: one clear message and no traceback; the traceback stays in the Prefect run's logs (its API
handler sees every record) and is printed when kerasflow logs at DEBUG level.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path


class ExpectedError(Exception):
    """Mixed into kerasflow's own errors that are the user's to fix: their message says what and where."""


# Built-in errors that are expected too, when kerasflow raises them with a message naming the file or server.
EXPECTED = (ExpectedError, FileNotFoundError, ConnectionError, TimeoutError)

# Why a file could not be written, in words, for the errors that are the machine's state, not a bug.
WRITE_FAILURES = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
}


class WriteError(ExpectedError):
    """A file kerasflow must write cannot be: a read-only folder, no permission, a full disk. Named with the path
    it was writing (not its temporary name) and the reason in words."""


def write_error(error: OSError, path: Path | str | None = None) -> WriteError | None:
    """The WriteError for `error` while writing `path` (else the file the error names, else the working folder),
    or None when the error is not a write failure."""
    reason = WRITE_FAILURES.get(error.errno or 0)
    if reason is None:
        return None
    where = Path(path or error.filename or os.getcwd())
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        existing = next((folder for folder in (where, *where.parents) if folder.exists()), Path("/"))
        reason += f" ({shutil.disk_usage(existing).free / 1e6:,.0f} MB free there)"
    if error.errno == errno.EROFS:
        reason += "; kerasflow writes its outputs (data/, models/, reports/, .kerasflow/) in the project folder"
    verb = "open" if error.errno in (errno.EACCES, errno.EPERM) else "write"  # a permission may be a read's
    return WriteError(f"cannot {verb} {where}: {reason}")


def expected_message(error: BaseException) -> str:
    """What the terminal shows for an expected failure: its message; a write failure's in words, with its path."""
    if isinstance(error, OSError) and (written := write_error(error)):
        return str(written)
    return str(error)


def is_expected(error: BaseException | None) -> bool:
    """Whether `error` (or what it was raised from) is an expected failure."""
    while error is not None:
        # ModelInputError lives in the model interface logged with each model, which imports nothing of kerasflow.
        if isinstance(error, EXPECTED) or type(error).__name__ == "ModelInputError":
            return True
        if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
            return True
        error = error.__cause__
    return False


class QuietExpectedFailures(logging.Filter):
    """On a console handler: Prefect's records of an expected failure (the traceback of the task, of the flow, and
    the "Finished in state Failed" lines carrying the same message) are left out; the command prints the message
    once. Nothing is filtered at DEBUG level, nor from the handlers that send logs to the Prefect API."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("kerasflow").isEnabledFor(logging.DEBUG):
            return True
        if record.exc_info and is_expected(record.exc_info[1]):
            self.failed = True
            return False
        message = record.getMessage()
        if self.failed and ("Finished in state Failed" in message or "exception" in message.lower()):
            return False
        return True


def quiet_console(loggers: tuple[str, ...] = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")) -> None:
    """Add the filter to the console handlers of Prefect's loggers (not to its API handler)."""
    quiet = QuietExpectedFailures()
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if "APILogHandler" in type(handler).__name__:
                continue
            if not any(isinstance(existing, QuietExpectedFailures) for existing in handler.filters):
                handler.addFilter(quiet)


class ConfigError(ExpectedError, ValueError):
    """Raised when params.yaml (or an override) is not a valid kerasflow configuration."""
