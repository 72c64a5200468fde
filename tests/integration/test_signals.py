"""`kerasflow run` stopped from outside: SIGTERM and Ctrl-C stop it cleanly and soon (its temporary Prefect server
too, the MLflow run marked KILLED); after SIGKILL, no process it started outlives it by more than a few seconds."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.servers import BIN, project_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_run(folder: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """`kerasflow run` in `folder` (its own process group), once it is training; its Prefect server's port."""
    shutil.copy(REPO_ROOT / "params.yaml", folder / "params.yaml")
    env = {k: v for k, v in project_env(REPO_ROOT).items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(folder / "prefect-home")
    command = [
        str(BIN / "kerasflow"),
        "run",
        "--set",
        "train.epochs=200",
        "--set",
        "train.early_stopping.enabled=false",
    ]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As a terminal starts it: SIGINT at its default. A background job of a non-interactive shell (as CI may run
        # the suite) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        found = re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        if "epoch 2/200" in line:
            return process, port, lines
    process.kill()
    raise AssertionError("".join(lines[-50:]))


def test_sigterm_stops_the_run_and_its_temporary_server(tmp_path):
    import mlflow

    process, port, _ = start_run(tmp_path)
    assert listening(port)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert not listening(port), output[-2000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
    assert runs and all(run.info.status == "KILLED" for run in runs)  # not left RUNNING


def test_ctrl_c_stops_the_run_within_seconds_with_one_line(tmp_path):
    import mlflow

    process, port, _ = start_run(tmp_path)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground process group
    output, _ = process.communicate(timeout=120)
    seconds = time.monotonic() - started
    assert process.returncode == 130 and seconds < 30, (seconds, output[-3000:])
    assert "Traceback" not in output and "ConnectError" not in output, output[-3000:]
    assert "kerasflow: the run was stopped (Ctrl-C); its MLflow run is marked KILLED" in output
    assert not listening(port)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
    assert runs and all(run.info.status == "KILLED" for run in runs)


def test_after_sigkill_no_orphan_outlives_the_run(tmp_path):
    process, port, _ = start_run(tmp_path)
    assert listening(port)
    os.kill(process.pid, signal.SIGKILL)  # the command only: its children are left as a kill leaves them
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not listening(port), "the temporary Prefect server outlived its kerasflow run"
