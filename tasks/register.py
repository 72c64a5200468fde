"""Register: a gated step. Every candidate becomes a registry version; only a blessed one
moves the `champion` alias, the others get `challenger`, and the reason is kept.

Blessed means: passes the thresholds in params, beats the scikit-learn baseline, beats the
current champion on the primary metric on the same test rows with evidence (in at least
`register.min_confidence` of the paired bootstrap's resamples; a tie keeps the champion), is not
worse than the champion by more than `register.max_slice_regression` on any slice with enough
rows, and survives a serving smoke test (train loaded the logged model back through MLflow and
it predicted what the trained model does; the registered files are those same bytes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kerasflow.config import RegisterParams
from kerasflow.metrics import at_least, is_better, lower_is_better
from kerasflow.records import ChampionScore, Comparison, Decision, Evaluation, split_size_note

logger = logging.getLogger(__name__)


@dataclass
class Gate:
    """The gate's checks as they are made: each a name, whether it passed, and the reason in words."""

    params: RegisterParams
    primary: str
    value: float
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def record(self, name: str, ok: bool, reason: str | None) -> None:
        self.checks[name] = ok
        if reason:
            self.reasons.append(reason)

    def confident(self, scope: str) -> bool:
        """Whether register.confidence_applies_to makes the evidence gate this check."""
        return scope in self.params.confidence_applies_to

    def decision(self) -> Decision:
        return Decision(promote=all(self.checks.values()), reasons=self.reasons, checks=self.checks)


def decide(
    candidate: dict[str, float],
    baseline: dict[str, float],
    champion: ChampionScore | None,
    primary: str,
    params: RegisterParams,
    smoke_test_ok: bool = True,
    dvc_experiment: str | None = None,
    reference_scores: dict[str, Any] | None = None,
    evidence: Evaluation | None = None,
) -> Decision:
    """Apply thresholds, the baseline, the reference, the current champion (and its slices), the DVC-experiment
    rule and the smoke test, in that order; explain each.

    `champion` is the current champion re-scored on this run's test split (`tasks.champion.rescore`:
    its version and `test` metrics, or why it was `skipped`), or None when there is none.
    A DVC experiment (`dvc_experiment`, its name) never promotes: it may be thrown away, and a
    champion must not come from work that is not in the workspace.

    `evidence` (the evaluation with its bootstrap comparisons, interval and slices) makes the champion
    move only on evidence; without it (an older metrics.json) the champion moves on a strictly better score.
    """
    gate = Gate(params, primary, candidate[primary], dict(evidence.comparisons) if evidence else {})
    check_thresholds(gate, candidate, evidence)
    if params.require_beat_baseline:
        check_baseline(gate, baseline[primary])
    if params.require_beat_reference:
        check_reference(gate, reference_scores or {}, evidence)
    if params.require_beat_champion:
        check_champion(gate, champion, evidence)
        check_slices(gate, champion, evidence)
    if dvc_experiment:
        gate.record(
            "not_a_dvc_experiment",
            False,
            f"DVC experiment {dvc_experiment} does not move champion; to promote it: "
            f"`dvc exp apply {dvc_experiment}` then `dvc repro --force --single-item register`",
        )
    failed = "the serving smoke test failed: the registered files are not those that loaded and predicted"
    gate.record("smoke_test", smoke_test_ok, None if smoke_test_ok else failed)
    return gate.decision()


def check_thresholds(gate: Gate, candidate: dict[str, float], evidence: Evaluation | None) -> None:
    """register.thresholds, each a bound on one metric; on the primary metric, with its 95 % interval (and, when
    the evidence gates thresholds, its cautious end must meet the bound too)."""
    low, high = (evidence.interval if evidence and evidence.interval else None) or (None, None)
    for metric, bound in gate.params.thresholds.items():
        if metric not in candidate:
            gate.record(f"threshold.{metric}", False, f"threshold on {metric}: the model has no {metric} metric")
            continue
        ok = at_least(metric, candidate[metric], bound)
        relation = "<=" if lower_is_better(metric) else ">="
        shown = f"{metric} {candidate[metric]:.4f}"
        if metric == gate.primary and low is not None and high is not None:
            shown += f" (95 % interval {low:.4f} to {high:.4f})"
            if gate.confident("thresholds"):
                ok = ok and at_least(metric, high if lower_is_better(metric) else low, bound)
        gate.record(f"threshold.{metric}", ok, f"{shown} {'meets' if ok else 'misses'} threshold {relation} {bound}")


def check_baseline(gate: Gate, reference: float) -> None:
    primary, value = gate.primary, gate.value
    better = is_better(primary, value, reference)
    ok, evidence = with_confidence(better, gate.comparisons.get("baseline"), gate.params, gate.confident("baseline"))
    verdict = "beats" if ok else "does not beat"
    gate.record("beats_baseline", ok, f"{primary} {value:.4f} {verdict} the baseline's {reference:.4f}{evidence}")


def check_reference(gate: Gate, strong: dict[str, Any], evidence: Evaluation | None) -> None:
    """register.require_beat_reference: the strong reference (HistGradientBoosting, or TF-IDF + LR) must be beaten."""
    primary, value = gate.primary, gate.value
    if primary not in strong:
        missing = "register.require_beat_reference is set, but there is no reference score (evaluate.reference)"
        gate.record("beats_reference", False, missing)
        return
    name = (evidence.reference_name if evidence else None) or strong.get("name")
    better = is_better(primary, value, strong[primary])
    ok, shown = with_confidence(better, gate.comparisons.get("reference"), gate.params, gate.confident("reference"))
    verdict = "beats" if ok else "does not beat"
    gate.record(
        "beats_reference", ok, f"{primary} {value:.4f} {verdict} the reference's ({name}) {strong[primary]:.4f}{shown}"
    )


def check_champion(gate: Gate, champion: ChampionScore | None, evidence: Evaluation | None) -> None:
    """The current champion, re-scored on this run's test rows, must be beaten with evidence; a tie keeps it."""
    primary, value = gate.primary, gate.value
    if champion is None:
        gate.record("beats_champion", True, "there is no current champion")
        return
    reference = champion.metric(primary)
    if reference is None:  # Why it was not scored (or that it has no such metric).
        gate.record(
            "beats_champion", True, f"{champion.summary(primary)}; judged on the thresholds and the baseline alone"
        )
        return
    better = is_better(primary, value, reference)
    ok, shown = with_confidence(better, champion.comparison, gate.params, True)
    if ok:
        verdict = "beats"
    elif better:
        verdict = "is better than, but not surely better than,"
    else:
        verdict = "ties with" if value == reference else "is worse than"
    keeps = "" if ok else "; the champion stays"
    note = split_size_note(evidence.test_rows, primary) if evidence else ""
    gate.record(
        "beats_champion",
        ok,
        f"{primary} {value:.4f} {verdict} the champion's (version {champion.version}) {reference:.4f} "
        f"on the same test rows{shown}{keeps}{f' ({note})' if note and not ok else ''}",
    )


def check_slices(gate: Gate, champion: ChampionScore | None, evidence: Evaluation | None) -> None:
    """register.max_slice_regression: on no slice of enough rows may the candidate trail the champion by more."""
    params, primary = gate.params, gate.primary
    sliced = evidence is not None and len(evidence.slices) > 1
    if not (sliced and params.max_slice_regression is not None and champion and champion.metric(primary) is not None):
        return
    from tasks.evidence import worst_slice

    worst = worst_slice(evidence.slices, primary, params.min_slice_rows)  # type: ignore[union-attr]
    if worst is None:
        reason = f"on no slice of {params.min_slice_rows} rows or more is it worse than the champion"
        gate.record("no_slice_regression", True, reason)
        return
    gap = abs(worst.candidate - worst.champion)
    ok = gap <= params.max_slice_regression
    gate.record(
        "no_slice_regression",
        ok,
        f"on slice {worst.key} ({worst.rows} rows) {primary} {worst.candidate:.4f} is {gap:.4f} worse than the "
        f"champion's {worst.champion:.4f}, {'within' if ok else 'more than'} register.max_slice_regression "
        f"{params.max_slice_regression}",
    )


def with_confidence(
    better: bool, comparison: Comparison | None, params: RegisterParams, gates: bool
) -> tuple[bool, str]:
    """Whether a strictly better score passes once its evidence is weighed (when `gates`: in at least
    register.min_confidence of the resamples), and the evidence in words for the reason."""
    if comparison is None or comparison.p_better is None:
        return better, ""
    text = f" {comparison.evidence()}"
    if not gates:
        return better, text
    sure = comparison.p_better >= params.min_confidence
    if better and not sure:
        text += f", below register.min_confidence {params.min_confidence:g}"
    return better and sure, text


def verify_registered_files(model_uri: str, expected_sha256: str) -> tuple[bool, str]:
    """The serving check, without loading TensorFlow again.

    Train loaded the logged model back through MLflow's pyfunc flavor and checked that it predicts
    what the trained model does (`roundtrip_max_abs_diff`). Here the registered version's files
    must be those same bytes: then it serves as that check showed.
    """
    from kerasflow import tracking

    try:
        found = tracking.registered_digest(model_uri)
    except Exception as error:  # Any failure to fetch the files means the version is not servable.
        return False, f"the registered files could not be read: {type(error).__name__}: {error}"
    if found != expected_sha256:
        return (
            False,
            f"the registered files (sha256 {found[:12]}) are not the ones train checked ({expected_sha256[:12]})",
        )
    return True, f"ok: the registered files are the ones that passed train's round trip (sha256 {found[:12]})"
