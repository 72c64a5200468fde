"""Atomic file writes and content hashes.

Every output is written under a temporary name and renamed into place, so a run
killed at any moment leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerasflow.errors import WriteError, write_error


@contextlib.contextmanager
def named_write_failures(path: Path) -> Iterator[None]:
    """A read-only folder, missing permission or a full disk while writing `path` is a WriteError naming `path`
    (not a temporary name beside it), with the reason in words."""
    try:
        yield
    except OSError as error:
        if (named := write_error(error, path)) is None:
            raise
        raise named from error


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    with named_write_failures(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        temporary_path = Path(temporary)
        try:
            yield temporary_path
            if temporary_path.exists():
                # mkstemp makes 0600: the file gets the replaced one's permissions, or those the umask gives.
                os.chmod(temporary_path, permissions(path, 0o666))
            os.replace(temporary_path, path)
        finally:
            temporary_path.unlink(missing_ok=True)


# Below this much free space a run is refused before it starts: its split, model, checkpoints and records need
# more than that for the smallest workload, and a store that fills mid-write fails with pages of SQL.
MIN_FREE_MB = 100


def check_writable(folder: Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """A WriteError now, naming `folder`, if a file cannot be made in it (read-only, no permission) or its disk has
    less than `min_free_mb` free: before a command starts servers and opens a run that would fail at its first
    output."""
    folder = Path(folder)
    with named_write_failures(folder), tempfile.TemporaryFile(dir=folder):
        pass
    free_mb = shutil.disk_usage(folder).free / 1e6
    if free_mb < min_free_mb:
        raise WriteError(
            f"cannot write {folder}: the disk is nearly full ({free_mb:,.0f} MB free there; a run needs at "
            f"least {min_free_mb} MB for its data, model and records)"
        )


def permissions(path: Path, default: int) -> int:
    """The mode of the file (or folder) at `path` if there is one, else `default` less the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return default & ~mask


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the stage that produces it first")
    return json.loads(path.read_text())


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; swap it in for `path` if the block succeeds."""
    path = Path(path)
    with named_write_failures(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            yield temporary
            os.chmod(temporary, permissions(path, 0o777))  # mkdtemp makes 0700
            if path.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, retired / "old")
                os.replace(temporary, path)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(temporary, path)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)


def file_md5(path: Path, chunk_size: int = 1 << 20) -> str:
    """MD5 of a file's bytes: the same content hash DVC records for a file output."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
