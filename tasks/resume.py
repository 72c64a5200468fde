"""What a killed training resumes from: the per-epoch backup of each phase, its folder (one per run folder,
model, training and data, so a changed config never restores the wrong weights), the epochs it finished, and
the workers' backups brought level before they restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd

from kerasflow.config import ModelParams, TrainParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backup:
    """What a killed training resumes from: a per-epoch backup for each phase and the epoch log.

    `head/` backs up the first phase and `fine_tune/` the second (Keras' BackupAndRestore, one
    per phase); when the first phase ends, its final weights and epoch count are kept as
    `head.weights.h5` and `head.json`, so a kill in either phase resumes that phase from its
    last finished epoch. The caller removes the folder once it has kept what training made.
    """

    folder: Path

    @property
    def epoch_log(self) -> Path:
        return self.folder / "epochs.csv"

    def phase_dir(self, phase: str) -> Path:
        return self.folder / phase

    @property
    def head_weights(self) -> Path:
        return self.folder / "head.weights.h5"

    @property
    def head_record(self) -> Path:
        return self.folder / "head.json"

    def head_epochs(self) -> int | None:
        """Epochs of a first phase that finished (None if it did not)."""
        if not (self.head_record.is_file() and self.head_weights.is_file()):
            return None
        return int(json.loads(self.head_record.read_text())["epochs"])

    def completed_epochs(self) -> int:
        """How many epochs (both phases) an interrupted attempt finished: 0 if there is nothing to resume."""
        done = [self.head_epochs() or 0]
        for phase in ("head", "fine_tune"):
            metadata = self.phase_dir(phase) / "training_metadata.json"
            if metadata.is_file():
                done.append(int(json.loads(metadata.read_text())["epoch"]))
        return max(done)

    def finish_head(self, model: keras.Model, epochs: int) -> None:
        self.head_weights.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(self.head_weights)
        self.head_record.write_text(json.dumps({"epochs": epochs}))

    def remove(self, keep: tuple[str, ...] = ()) -> None:
        """Remove the backup; with `keep`, those entries of its folder stay (and the folder, if any do)."""
        for entry in self.folder.glob("*"):
            if entry.name in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: a kept entry is there
            self.folder.rmdir()


def backup_folder(backups: Path, model: ModelParams, train: TrainParams, seed: int, data_md5: str) -> Path:
    """Where training keeps its per-epoch backup (under `backups`): one folder per (run folder, model, training,
    data), so a rerun with the same config resumes and a changed config never restores the wrong weights."""
    config = {"model": model.model_dump(mode="json"), "train": train.model_dump(mode="json")}
    config.update(seed=seed, data=data_md5)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return backups / digest


def best_weights_path(backup: Path) -> Path:
    return backup.with_name(f"{backup.name}.best.weights.h5")


def finished_epochs(folder: Path) -> pd.DataFrame:
    """The epochs (with an `epoch` column) that a killed attempt finished, from its backup's epoch log; empty
    when there is nothing to resume."""
    backup = Backup(folder)
    done = backup.completed_epochs()
    if not done or not backup.epoch_log.is_file():
        backup.epoch_log.unlink(missing_ok=True)
        return pd.DataFrame()
    # A kill while a line was being written leaves half a line: skipped.
    earlier = pd.read_csv(backup.epoch_log, on_bad_lines="skip").dropna(subset=["epoch"])
    earlier = earlier.astype({"epoch": "int64"}).drop_duplicates("epoch", keep="last")
    return earlier[earlier["epoch"] < done].sort_values("epoch").reset_index(drop=True)


def worker_backup(chief: Path, index: int) -> Backup:
    """Each worker's BackupAndRestore folder: the chief's is the stage's own, worker i's is inside it."""
    return Backup(chief if index == 0 else chief / "workers" / str(index))


def reconcile_backups(chief: Path, workers: int) -> None:
    """Before (re)starting N workers: give every worker the backup of the one that got furthest. All workers hold
    the same weights at the end of each epoch (the epoch's all-reduce made them so), so the furthest backup is
    every worker's state there; a kill between two workers' backups would otherwise resume them at different
    epochs, and they would wait for each other forever."""
    backups = [worker_backup(chief, index) for index in range(workers)]
    furthest = max(backups, key=lambda backup: backup.completed_epochs())
    if not furthest.completed_epochs():
        return
    for backup in backups:
        if backup is furthest or backup.completed_epochs() == furthest.completed_epochs():
            continue
        for name in ("head", "fine_tune"):
            shutil.rmtree(backup.phase_dir(name), ignore_errors=True)
            if furthest.phase_dir(name).is_dir():
                shutil.copytree(furthest.phase_dir(name), backup.phase_dir(name))
        for name in ("head_weights", "head_record"):
            source, target = getattr(furthest, name), getattr(backup, name)
            target.unlink(missing_ok=True)
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    logger.info("the workers resume after epoch %d", furthest.completed_epochs())
