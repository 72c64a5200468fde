"""The Keras side of a tuning trial: report each epoch to the study and stop a trial the pruner gives up on;
keep each epoch's logs for the trial's value and the study's chart of every trial's curves."""

from __future__ import annotations

import math
from typing import Any

import keras
import optuna
import pandas as pd


class PruningCallback(keras.callbacks.Callback):
    """Report the watched metric to the trial each epoch; stop the trial when the pruner says so. A trial that has
    run its last epoch (of `epochs`) is never pruned: pruning saves nothing then, and it is complete."""

    def __init__(self, trial: optuna.trial.Trial, metric: str, sign: float = 1.0, epochs: int | None = None) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.sign = sign
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return  # TerminateOnNaN ends the trial as failed.
        self.trial.report(self.sign * float(value), epoch)
        last = self.epochs is not None and epoch + 1 >= self.epochs
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch + 1}: {self.metric} {float(value):.4g} trails the median of earlier trials"
            )


class EpochRecorder(keras.callbacks.Callback):
    """Each epoch's logs, kept for the trial's value and for the study's chart of every trial's curves."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.rows.append({name: float(value) for name, value in (logs or {}).items()})

    def history(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        frame.insert(0, "epoch", range(len(frame)))
        return frame

    def validation_curves(self) -> dict[str, list[float | None]]:
        """Each val_ metric per epoch (None where it was not finite: JSON has no NaN)."""
        names = sorted({name for row in self.rows for name in row if name.startswith("val_")})
        return {
            name: [row[name] if math.isfinite(row.get(name, math.nan)) else None for row in self.rows] for name in names
        }
