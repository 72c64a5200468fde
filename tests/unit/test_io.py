"""Writes are atomic: a failure mid-write leaves the old file (or folder), never half a new one."""

from __future__ import annotations

import hashlib

import pytest

from kerasflow.io import atomic_dir, atomic_path, file_md5, read_json, write_json


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
