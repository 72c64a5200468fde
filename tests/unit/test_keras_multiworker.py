"""The Keras workaround for MultiWorkerMirroredStrategy (tasks/keras_multiworker.py), on two real worker
processes on loopback: still needed (bare Keras 3 fails), still working (the workers train in step to the same
weights, those of one process that sees the same global batches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tasks.cluster import free_ports
from tests.conftest import REPO_ROOT

SCRIPT = Path(__file__).with_name("multiworker_script.py")


def train(mode: str, folder: Path, workers: int = 2) -> list[subprocess.CompletedProcess]:
    ports = ",".join(str(port) for port in free_ports(workers))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(index), ports, mode, str(folder / f"{mode}-{index}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index in range(workers)
    ]  # fmt: skip
    results = []
    for process in started:
        try:
            output, _ = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for other in started:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


def test_keras_still_needs_the_workaround(tmp_path):
    results = train("bare", tmp_path)
    # If this fails, Keras trains under MultiWorkerMirroredStrategy by itself (keras-team/keras#20585 fixed):
    # delete tasks/keras_multiworker.py and this test.
    assert all(result.returncode != 0 for result in results), results[0].stdout[-2000:]
    assert "PerReplica" in results[0].stdout or "axis" in results[0].stdout, results[0].stdout[-2000:]


def test_with_the_workaround_two_workers_train_as_one_process_would(tmp_path):
    for result in train("patched", tmp_path):
        assert result.returncode == 0, result.stdout[-3000:]
    single = train("single", tmp_path, workers=1)[0]
    assert single.returncode == 0, single.stdout[-3000:]
    first, second, alone = (
        json.loads((tmp_path / name).read_text()) for name in ("patched-0.json", "patched-1.json", "single-0.json")
    )
    assert first["weights"] == second["weights"]  # in step: bit-identical
    losses = first["history"]["loss"]
    assert losses[-1] < losses[0] and first["history"]["accuracy"][-1] > 0.75
    # The same global batches as one process: the same training, up to the order of float additions.
    np.testing.assert_allclose(first["weights"], alone["weights"], atol=1e-5)
    np.testing.assert_allclose(losses, alone["history"]["loss"], rtol=1e-5)
