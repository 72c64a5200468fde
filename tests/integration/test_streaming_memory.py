"""Memory follows the batch, not the file: the same pipeline on a file four times as long peaks at about the same
memory in every stage (each a process of its own, as `dvc repro` runs them), and `kerasflow predict` too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.memory import peak_of
from tests.conftest import REPO_ROOT
from tests.integration.servers import project_env

STAGES = ("ingest", "validate", "preprocess", "train", "evaluate", "register")
BATCH = 2000
# Holding a 400,000-row file of 24 float64 columns once takes 77 MB; the stages hold it several times over when
# they read it whole. Streaming, the four-times-longer file may cost no more than this.
ALLOWED_GROWTH_MB = 60


def peak_pss_mb(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run `command`; the peak proportional set size (PSS) of its process tree, sampled every 50 ms."""
    return peak_of(command, cwd, env, interval=0.05)[1]


def project(folder: Path, rows: int) -> Path:
    """A project whose data is `rows` x 24 numeric columns, with every batch and sample setting at BATCH rows."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 24))
    frame = pd.DataFrame(x, columns=[f"f{index}" for index in range(24)]).assign(label=(x[:, :12].sum(axis=1) > 0) * 1)
    frame.to_parquet(folder / "table.parquet", index=False, row_group_size=50_000)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"] = {"source": "file", "path": "table.parquet", "target": "label", "batch_rows": BATCH}
    params["preprocess"].update(row_group_rows=BATCH, sample_rows=BATCH)
    params["model"]["layers"] = [{"type": "dense", "units": 16, "activation": "relu"}]
    params["train"].update(epochs=1, batch_size=256, in_memory=False, shuffle_buffer=BATCH)
    params["train"]["early_stopping"]["enabled"] = False
    params["evaluate"].update(baseline_rows=BATCH, batch_rows=BATCH)
    params["register"].update(thresholds={}, require_beat_baseline=False)
    params["predict"] = {"batch_rows": BATCH}
    params.pop("tune")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


@pytest.mark.slow
@pytest.mark.integration
def test_every_stage_and_predict_stay_flat_in_memory_as_the_file_grows(tmp_path):
    env = project_env(REPO_ROOT)
    peaks: dict[int, dict[str, float]] = {}
    for rows in (100_000, 400_000):  # the longer file is 200 times the batch
        folder = project(tmp_path / str(rows), rows)
        peaks[rows] = {
            stage: peak_pss_mb([sys.executable, "-m", "flows.dvc_stage", stage], folder, env) for stage in STAGES
        }
        command = [sys.executable, "-m", "flows.cli", "predict", "--input", "table.parquet", "--output", "out.parquet"]
        peaks[rows]["predict"] = peak_pss_mb(command, folder, env)
        assert len(pd.read_parquet(folder / "out.parquet", columns=["row"])) == rows
    growth = {stage: peaks[400_000][stage] - peaks[100_000][stage] for stage in peaks[100_000]}
    assert all(value < ALLOWED_GROWTH_MB for value in growth.values()), f"growth {growth}, peaks {peaks}"
