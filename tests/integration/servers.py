"""Real servers for integration tests (started on free loopback ports, always stopped), the project as a user's
clone has it, and new rows for its default model to score."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def clone_project(destination: Path, env: dict[str, str] | None = None, remote: Path | None = None) -> Path:
    """The project as a user's clone has it, in `destination`: every file git tracks or would track in the working
    tree (its .gitignore, .dvc/, params.yaml, dvc.yaml, prefect.yaml, examples ...; the uncommitted changes under
    test included), committed into a git repository of its own. With `remote`, DVC's default remote is there."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    destination.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    env = env or project_env(destination)
    run(["git", "init", "-q"], destination, env)
    if remote is not None:
        run(["dvc", "remote", "modify", "local", "url", str(remote)], destination, env)
    run(["git", "add", "-A"], destination, env)
    run(["git", "commit", "-qm", "project"], destination, env)
    return destination


def digits_file(path: Path, shift: float = 0.0, rows: int = 300) -> Path:
    """The last `rows` of scikit-learn's digits as a CSV of the default model's pixel columns, `shift` added to every
    pixel (a shift makes them brighter than any image the model trained on: drift)."""
    import pandas as pd
    from sklearn.datasets import load_digits

    images = load_digits().images[-rows:] + shift
    columns = [f"pixel_{row}_{column}" for row in range(8) for column in range(8)]
    pd.DataFrame(images.reshape(rows, -1), columns=columns).to_csv(path, index=False)
    return path


def run(command: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a command of the project under test; with `check`, a failure is an AssertionError showing its output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def project_env(root: Path) -> dict[str, str]:
    """The environment a copied project runs in: its own code first, this venv's tools on PATH, a git identity,
    and no tracking store inherited from the caller."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def wait_for_backup(
    root: Path, stage: subprocess.Popen, log: Path, epochs: int, phase: str = "head", timeout: float = 300
) -> Path:
    """Wait until the training stage running in `root` has backed up `epochs` finished epochs of `phase` (the
    per-epoch backup is written after the epoch is logged, so a kill after this leaves them resumable); return
    that backup's folder. Fails with the stage's last output if it ends or the time runs out first."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        assert stage.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        for metadata in root.glob(f".kerasflow/backup/*/{phase}/training_metadata.json"):
            if json.loads(metadata.read_text() or "{}").get("epoch", 0) >= epochs:
                return metadata.parent.parent
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{url}: not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def background(
    command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Run a command in its own process group; stop the whole group afterwards."""
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` with a sqlite backend and served artifacts, bound to 127.0.0.1."""
    port = free_port()
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination", str(folder / "served-artifacts"),
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with background(command, folder / "mlflow-server.log", dict(os.environ)) as process:
        wait_healthy(f"{uri}/health", process, folder / "mlflow-server.log")
        yield uri


def postgres_bin(name: str) -> str:
    """A program of Debian's PostgreSQL (`initdb`, `postgres`, `pg_isready`, `psql`): on PATH, or in its versioned
    folder."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's postgresql package")
    return str(found)


@contextlib.contextmanager
def postgres_server(databases: tuple[str, ...]) -> Iterator[str]:
    """A PostgreSQL cluster of its own (initdb, then postgres) on a free loopback port, with `databases` made in it;
    yields `host:port` (user postgres, no password: trust, for the test only). Run as the postgres user when the
    tests run as root (PostgreSQL refuses root); its data folder is under /tmp, where that user can reach it."""
    import pwd
    import tempfile

    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="kerasflow-postgres-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    log = data.with_name(f"{data.name}.log")
    try:
        subprocess.run(
            [*as_user, postgres_bin("initdb"), "-D", str(data / "cluster"), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        port = free_port()
        command = [*as_user, postgres_bin("postgres"), "-D", str(data / "cluster"), "-h", "127.0.0.1",
                   "-p", str(port), "-k", str(data), "-c", "fsync=off"]  # fmt: skip
        with background(command, log, env):
            ready = [postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
            deadline = time.monotonic() + 60
            while subprocess.run(ready, capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PostgreSQL did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            for name in databases:
                subprocess.run(
                    [postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                     f"CREATE DATABASE {name}"],
                    env=env, check=True, capture_output=True, timeout=60,
                )  # fmt: skip
            yield f"127.0.0.1:{port}"
    finally:
        shutil.rmtree(data, ignore_errors=True)
        log.unlink(missing_ok=True)


def postgres_query(address: str, database: str, sql: str) -> str:
    """One SQL query's result, unaligned and without headers (psql -At)."""
    host, port = address.split(":")
    command = [postgres_bin("psql"), "-h", host, "-p", port, "-U", "postgres", "-d", database, "-At", "-c", sql]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
