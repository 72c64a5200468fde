"""Writes are atomic: a failure mid-write leaves the old file (or folder), never half a new one."""

from __future__ import annotations

import errno
import hashlib
import tempfile

import pytest

from flows.cli import main
from kerasflow.errors import WriteError, write_error
from kerasflow.io import atomic_dir, atomic_path, check_writable, file_md5, read_json, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text('{"accuracy": 0.')  # half written when the process "dies"
            raise RuntimeError("killed")
    assert read_json(target) == {"accuracy": 0.9}
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    target = tmp_path / "processed"
    with atomic_dir(target) as folder:
        (folder / "x.npy").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as folder:
            (folder / "x.npy").write_text("new, half")
            raise RuntimeError("killed")
    assert (target / "x.npy").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["processed"]


def test_read_json_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json: not found; run the stage that produces it first"):
        read_json(tmp_path / "missing.json")


def test_file_md5_is_the_plain_content_hash(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"kerasflow" * 100_000)
    assert file_md5(path, chunk_size=4096) == hashlib.md5(path.read_bytes()).hexdigest()


def test_quiet_imports_from_two_threads_leave_stderr_whole():
    """Stage runs and tuning trials import from threads: overlapping swaps of the process's stderr once left it
    pointing at a deleted temporary file, and every later warning was lost."""
    import importlib
    import os
    import sys
    import threading

    from kerasflow import runtime

    before = os.fstat(2)
    errors = []
    names = [f"json.{name}" for name in ("decoder", "encoder", "scanner")] + ["csv", "uuid", "decimal", "fractions"]

    def work(offset: int) -> None:
        try:
            for index in range(40):
                name = names[(index + offset) % len(names)]
                getattr(runtime, "_QUIETED", set()).discard(name)  # swap every time, as a first import would
                sys.modules.pop(name, None) if name in ("fractions",) else None
                runtime.import_quietly(name)
                sys.stderr.write("")
        except Exception as error:  # noqa: BLE001 (collected for the assertion)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert not errors
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # stderr is still stderr
    importlib.import_module("json")


def test_written_files_keep_the_umask_or_the_replaced_files_permissions(tmp_path):
    import os
    import stat

    from kerasflow.io import atomic_dir, write_text

    previous = os.umask(0o022)
    try:
        write_text(tmp_path / "params.yaml", "seed: 1\n")
        with atomic_dir(tmp_path / "models") as folder:
            (folder / "model.keras").write_text("x")
        assert stat.S_IMODE((tmp_path / "params.yaml").stat().st_mode) == 0o644  # not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / "models").stat().st_mode) == 0o755  # not mkdtemp's 0700
        (tmp_path / "params.yaml").chmod(0o664)  # a team's shared file stays shared when it is rewritten
        write_text(tmp_path / "params.yaml", "seed: 2\n")
        assert stat.S_IMODE((tmp_path / "params.yaml").stat().st_mode) == 0o664
    finally:
        os.umask(previous)


def test_a_full_disk_names_the_file_being_written_and_the_space_left(tmp_path):
    target = tmp_path / "reports" / "metrics.json"
    with pytest.raises(WriteError, match=r"cannot write .*reports/metrics\.json: the disk is full \([\d,]+ MB free"):
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # a write with no file name, as write() gives
    assert not target.parent.exists() or list(target.parent.iterdir()) == []  # nothing half-written


def test_a_read_only_folder_is_named_at_once_by_the_commands(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".params.yaml.x1y2.yaml"))

    with pytest.raises(WriteError, match="the file system is read-only"):
        with monkeypatch.context() as patch:
            patch.setattr(tempfile, "TemporaryFile", read_only)
            check_writable(tmp_path)
    with pytest.raises(WriteError, match=r"the disk is nearly full \([\d,]+ MB free there; a run needs at least"):
        check_writable(tmp_path, min_free_mb=10**12)  # more than any disk here has
    check_writable(tmp_path, min_free_mb=0)
    # The command: one line naming params.yaml (not its temporary name), exit 1, no traceback.
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "".join(f"{(i * 7) % 11 / 3:.3f},{i % 2}\n" for i in range(40)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["init", "--data", str(data), "--target", "y"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kerasflow: cannot write {tmp_path / 'params.yaml'}: the file sys")


def test_other_os_errors_are_not_dressed_as_write_failures(tmp_path):
    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "x.json"):
            raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(caught.value, WriteError) and write_error(caught.value) is None
    assert write_error(PermissionError(errno.EACCES, "denied", "/data/in.csv")) is not None  # a read's: "open"
    assert str(write_error(PermissionError(errno.EACCES, "denied", "/data/in.csv"))).startswith("cannot open")
