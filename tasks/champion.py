"""The current champion, re-scored on this run's test split, so the gate compares like with like.

A champion's own logged metrics were measured on its run's split and data version; a candidate's
on another. Here the champion predicts this run's test rows with its own code (its pyfunc), and
is scored exactly as the candidate was. A champion that cannot take this data (other columns,
other classes, another image size) is not scored, and the reason is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    model_name: str,
    version: str,
    test: Split | ParquetSplit,
    state: PreprocessState,
    batch_rows: int = 1 << 16,
    cache: Path | None = None,
) -> Rescored:
    """`rescore`, keeping the champion's outputs on the test rows (for the paired bootstrap and the slices).

    With a `cache` folder, the outputs of a version on a test split are kept there, named by the SHA-256 of the
    version's files (recorded at registration) and the MD5 of the split's file: the next run on the same split
    (every `dvc repro` that did not change the data) weighs them without loading the champion, or TensorFlow."""
    from tasks.evaluate import score_predictions  # scikit-learn's metrics: only when there is a champion to score

    path = cached_outputs_path(cache, model_name, version, test)
    found = read_cached_outputs(path) if path else None
    if found is not None and (reason := mismatch(found[0], state)):  # kept outputs, for data unlike this run's
        return Rescored(not_scored_here(version, reason))
    if found is None:
        found = champion_outputs(model_name, version, test, state, batch_rows)
        if isinstance(found, ChampionScore):  # not scored, and why
            return Rescored(found)
        if path:
            write_cached_outputs(path, *found)
    config, outputs = found
    scores = score_predictions(state.task, test.labels() if isinstance(test, ParquetSplit) else test.y, outputs,
                               state.n_classes, config.threshold)  # fmt: skip
    return Rescored(ChampionScore(version, test=scores, test_rows=len(test)), outputs, config.threshold)


def champion_outputs(
    model_name: str, version: str, test: Split | ParquetSplit, state: PreprocessState, batch_rows: int
) -> tuple[ModelConfig, np.ndarray] | ChampionScore:
    """The champion's config and its outputs on the test rows, from its own code (its pyfunc, files checked), or
    the ChampionScore that says why it was not scored."""
    from kerasflow import tracking

    try:
        model = tracking.load_version(model_name, version)
    except tracking.ModelRefused as error:  # a tampered champion must not stop every later run
        return ChampionScore(version, skipped=f"the champion (version {version}) cannot be scored: {error}")
    scorer = model.unwrap_python_model()
    # Its own copy of the model interface's config (older versions kept a plain dict).
    raw = scorer.config.to_dict() if hasattr(scorer.config, "to_dict") else dict(scorer.config)
    config = ModelConfig.from_dict(raw)
    reason = mismatch(config, state)
    if reason:
        return not_scored_here(version, reason)
    if isinstance(test, Split):
        return config, model_outputs(scorer.predict(None, test.x), config)
    # The test split streamed through the champion's own code, a batch at a time.
    return config, np.concatenate([model_outputs(scorer.predict(None, x), config) for x, _ in test.batches(batch_rows)])


def not_scored_here(version: str, reason: str) -> ChampionScore:
    return ChampionScore(version, skipped=f"the champion (version {version}) cannot be scored here: {reason}")


def cached_outputs_path(cache: Path | None, model_name: str, version: str, test: Split | ParquetSplit) -> Path | None:
    """Where a version's outputs on this test split are kept (None: not kept; a version registered without a
    digest, or a split in memory)."""
    if cache is None or not isinstance(test, ParquetSplit):
        return None
    from kerasflow import tracking
    from kerasflow.io import file_md5

    digest = tracking.recorded_digest(model_name, version)
    return cache / f"{digest[:24]}-{file_md5(test.path)}.npz" if digest else None


def read_cached_outputs(path: Path) -> tuple[ModelConfig, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return ModelConfig.from_dict(json.loads(str(saved["config"]))), saved["outputs"]


def write_cached_outputs(path: Path, config: ModelConfig, outputs: np.ndarray) -> None:
    from kerasflow.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, outputs=outputs, config=np.array(json.dumps(config.to_dict())))


def rescore_current(
    model_name: str,
    test: Split | ParquetSplit,
    state: PreprocessState,
    batch_rows: int = 1 << 16,
    cache: Path | None = None,
) -> Rescored | None:
    """The current champion re-scored on `test` (None when there is no champion)."""
    version = current_champion(model_name)
    return rescore_outputs(model_name, version, test, state, batch_rows, cache) if version else None
