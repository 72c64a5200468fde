"""Real servers for integration tests: started on free loopback ports, always stopped."""

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


def copy_project(names: list[str], destination: Path) -> Path:
    """Copy the project's code and config files (no caches) into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, destination / name)
    return destination


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


def init_git_dvc(root: Path, env: dict[str, str], remote: Path | None = None) -> None:
    """Make `root` a git + DVC repository (analytics off, generated state ignored) with one commit of it all."""
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run(command, root, env)
    if remote is not None:
        run(["dvc", "remote", "add", "-d", "local", str(remote)], root, env)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.kerasflow/\n__pycache__/\n.*.lock\n")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)


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
