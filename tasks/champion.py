"""The current champion, re-scored on this run's test split, so the gate compares like with like.

A champion's own logged metrics were measured on its run's split and data version; a candidate's
on another. Here the champion predicts this run's test rows with its own code (its pyfunc), and
is scored exactly as the candidate was. A champion that cannot take this data (other columns,
other classes, another image size) is not scored, and the reason is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasflow.model_interface import ModelConfig, model_outputs
from kerasflow.records import CHAMPION, ChampionScore, PreprocessState
from tasks.preprocess import ParquetSplit, Split


def current_champion(model_name: str) -> str | None:
    """The version the `champion` alias points at now, or None."""
    from kerasflow import tracking

    return tracking.version_for_alias(model_name, CHAMPION)


def mismatch(champion: ModelConfig, state: PreprocessState) -> str | None:
    """Why the champion cannot take this run's data, or None when it can."""
    if champion.task != state.task:
        return f"it is a {champion.task} model and this data is a {state.task} task"
    if champion.inputs.kind != state.inputs.kind:
        return f"it takes {champion.inputs.kind} and this data is {state.inputs.kind}"
    if champion.inputs.kind == "image" and champion.inputs.shape != state.inputs.shape:
        return f"it takes images of shape {list(champion.inputs.shape)}, this data's are {list(state.inputs.shape)}"
    theirs = {entry.column: entry.kind for entry in champion.inputs.columns}
    ours = {entry.column: entry.kind for entry in state.inputs.columns}
    missing = sorted(set(theirs) - set(ours))
    if missing:
        return f"it takes column(s) {missing} that this data does not have"
    changed = sorted(column for column, kind in theirs.items() if ours[column] != kind)
    if changed:
        return f"its column(s) {changed} are of another kind in this data"
    if [str(label) for label in champion.classes or []] != [str(label) for label in state.classes or []]:
        return f"it predicts classes {champion.classes} and this data has {state.classes}"
    return None


def rescore(
    model_name: str, version: str, test: Split | ParquetSplit, state: PreprocessState, batch_rows: int = 1 << 16
) -> ChampionScore:
    """The champion version's metrics on this run's test split, or why it could not be scored on it."""
    return rescore_outputs(model_name, version, test, state, batch_rows).score


@dataclass(frozen=True)
class Rescored:
    """The champion's score on the test rows, and its outputs there and threshold (None: it was not scored)."""

    score: ChampionScore
    outputs: np.ndarray | None = None
    threshold: float = 0.5


def rescore_outputs(
    model_name: str, version: str, test: Split | ParquetSplit, state: PreprocessState, batch_rows: int = 1 << 16
) -> Rescored:
    """`rescore`, keeping the champion's outputs on the test rows (for the paired bootstrap and the slices)."""
    from kerasflow import tracking
    from tasks.evaluate import score_predictions  # scikit-learn's metrics: only when there is a champion to score

    try:
        model = tracking.load_version(model_name, version)
    except tracking.ModelRefused as error:  # a tampered champion must not stop every later run
        return Rescored(ChampionScore(version, skipped=f"the champion (version {version}) cannot be scored: {error}"))
    scorer = model.unwrap_python_model()
    # Its own copy of the model interface's config (older versions kept a plain dict).
    raw = scorer.config.to_dict() if hasattr(scorer.config, "to_dict") else dict(scorer.config)
    config = ModelConfig.from_dict(raw)
    reason = mismatch(config, state)
    if reason:
        return Rescored(
            ChampionScore(version, skipped=f"the champion (version {version}) cannot be scored here: {reason}")
        )
    if isinstance(test, Split):
        outputs, labels = model_outputs(scorer.predict(None, test.x), config), test.y
    else:  # the test split streamed through the champion's own code, a batch at a time
        parts = [model_outputs(scorer.predict(None, x), config) for x, _ in test.batches(batch_rows)]
        outputs, labels = np.concatenate(parts), test.labels()
    scores = score_predictions(state.task, labels, outputs, state.n_classes, config.threshold)
    return Rescored(ChampionScore(version, test=scores, test_rows=len(test)), outputs, config.threshold)


def rescore_current(
    model_name: str, test: Split | ParquetSplit, state: PreprocessState, batch_rows: int = 1 << 16
) -> Rescored | None:
    """The current champion re-scored on `test` (None when there is no champion)."""
    version = current_champion(model_name)
    return rescore_outputs(model_name, version, test, state, batch_rows) if version else None
