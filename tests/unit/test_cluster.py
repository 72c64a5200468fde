"""Training across workers, the parts that need no cluster: TF_CONFIG checked, the params that cannot work
refused by name, equal shards of row groups, backups reconciled, and a failed worker named by the launcher."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from kerasflow.config import ConfigError, TrainParams
from kerasflow.model_interface import ModelInputs
from tasks import cluster
from tasks.datasets import shard_steps
from tasks.preprocess import LABEL, ParquetSplit
from tasks.resume import reconcile_backups, worker_backup

TWO = {"cluster": {"worker": ["127.0.0.1:2000", "127.0.0.1:2001"]}, "task": {"type": "worker", "index": 1}}


def test_a_well_formed_tf_config_names_the_workers_and_the_chief():
    found = cluster.read_tf_config(json.dumps(TWO))
    assert found == cluster.Cluster(("127.0.0.1:2000", "127.0.0.1:2001"), 1, chief=False)
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}
    assert cluster.read_tf_config(json.dumps(with_chief)) == cluster.Cluster(("a:1", "b:2"), 0, chief=True)
    with_chief["task"] = {"type": "worker", "index": 0}
    assert cluster.read_tf_config(json.dumps(with_chief)).index == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "needs TF_CONFIG"),
        ("{not json", "TF_CONFIG is not JSON"),
        ('["a"]', 'must be an object with "cluster" and "task"'),
        (json.dumps({**TWO, "cluster": {"ps": ["a:1"], "worker": ["b:2"]}}), "jobs ['ps']"),
        (json.dumps({**TWO, "cluster": {"worker": ["no-port"]}}), "list of 'host:port'"),
        (json.dumps({**TWO, "cluster": {"worker": []}}), "non-empty list"),
        (json.dumps({**TWO, "task": {"type": "evaluator", "index": 0}}), "task.type must be one of ['worker']"),
        (json.dumps({**TWO, "task": {"type": "worker", "index": 2}}), "task.index must be an integer from 0 to 1"),
        (json.dumps({**TWO, "task": {"type": "worker", "index": "0"}}), "task.index"),
    ],
)
def test_a_malformed_tf_config_is_refused_by_name(text, message, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=re.escape(message)):
        cluster.read_tf_config(text)


def test_params_refuse_what_cannot_work():
    with pytest.raises(ValidationError, match="workers: 2 applies only with distribute: multi_worker"):
        TrainParams(workers=2)
    with pytest.raises(ValidationError, match="cannot train with jit_compile: true"):
        TrainParams(distribute="multi_worker", jit_compile=True)
    with pytest.raises(ConfigError, match="takes strings"):
        cluster.check(TrainParams(distribute="multi_worker", workers=2), string_inputs=True)
    assert cluster.check(TrainParams(distribute="multi_worker", workers=2)) is None  # this process launches them
    assert cluster.check(TrainParams()) is None
    with pytest.raises(ConfigError, match="global batch and must divide evenly among the 3 replicas"):
        cluster.per_replica_batch(TrainParams(batch_size=32), 3)
    assert cluster.per_replica_batch(TrainParams(batch_size=32), 4) == 8


def split_file(tmp_path, groups: list[int]) -> ParquetSplit:
    path = tmp_path / "train.parquet"
    writer = None
    start = 0
    for rows in groups:
        table = pa.table({"x": pa.array(range(start, start + rows), pa.float32()), LABEL: pa.array([0] * rows)})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        start += rows
    writer.close()
    return ParquetSplit(path, ModelInputs("columns"))


def test_every_worker_gets_the_same_number_of_full_batches(tmp_path):
    source = split_file(tmp_path, [100, 100, 100, 30])
    # Worker 0 holds groups 0 and 2 (200 rows), worker 1 groups 1 and 3 (130): 130 // 16 = 8 batches each.
    assert shard_steps(source, 2, 16) == 8
    assert shard_steps(source, 4, 16) == 1
    # Fewer row groups than workers: every 5th row of each group (66 rows for the smallest shard).
    assert shard_steps(source, 5, 16) == 4
    with pytest.raises(ConfigError, match="make train.batch_size smaller"):
        shard_steps(source, 5, 128)


def test_restarted_workers_all_resume_from_the_furthest_backup(tmp_path):
    chief = tmp_path / "backup"

    def backed_up(index: int, epoch: int) -> None:
        phase = worker_backup(chief, index).phase_dir("head")
        phase.mkdir(parents=True)
        (phase / "training_metadata.json").write_text(json.dumps({"epoch": epoch}))
        (phase / "latest.weights.h5").write_text(f"weights of epoch {epoch}")

    backed_up(0, 3)
    backed_up(1, 2)  # killed before it backed up its third epoch
    reconcile_backups(chief, 3)  # worker 2 never backed up at all
    for index in range(3):
        backup = worker_backup(chief, index)
        assert backup.completed_epochs() == 3
        assert (backup.phase_dir("head") / "latest.weights.h5").read_text() == "weights of epoch 3"


def test_a_failed_worker_is_named_with_its_last_lines_and_the_others_stopped(tmp_path):
    with pytest.raises(cluster.WorkerFailed) as raised:
        cluster.launch(2, ["--params", str(tmp_path / "missing.yaml")], cwd=tmp_path)
    message = str(raised.value)
    assert re.search(r"training worker [01] of 2 exited with status 2; the other workers were stopped", message)
    assert "missing.yaml: file not found" in message


def test_the_run_description_says_the_training_went_across_workers():
    from kerasflow import notes

    tags = {"registry.model": "digits", "train.device": "CPU", "train.workers": "2", "train.per_replica_batch": "16"}
    described = notes.run_description(tags, {"epochs_trained": 4, "best_epoch": 3})
    assert "- **Training:** 4 epochs, best epoch 3, on CPU, across 2 workers (MultiWorkerMirroredStrategy, 16 rows" in (
        described
    )
    assert "across" not in notes.run_description({**tags, "train.workers": ""}, {"epochs_trained": 4})


def test_kerasflow_train_worker_refuses_a_malformed_tf_config_before_any_work(tmp_path, monkeypatch, caplog):
    from flows import cli
    from tests.conftest import REPO_ROOT

    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    monkeypatch.setenv("TF_CONFIG", "{not json")
    arguments = ["train-worker", "--params", str(tmp_path / "params.yaml"), "--set", "train.distribute=multi_worker"]
    assert cli.main(arguments) == 2
    assert "TF_CONFIG is not JSON" in caplog.text
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlflow.db").exists()
