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
