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
from typing import Any

from kerasflow.config import RegisterParams
from kerasflow.metrics import at_least, is_better, lower_is_better
from kerasflow.records import ChampionScore, Comparison, Decision, Evaluation, split_size_note

logger = logging.getLogger(__name__)


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
    """Apply thresholds, the baseline, the current champion and the smoke test; explain each.

    `champion` is the current champion re-scored on this run's test split (`tasks.champion.rescore`:
    its version and `test` metrics, or why it was `skipped`), or None when there is none.
    A DVC experiment (`dvc_experiment`, its name) never promotes: it may be thrown away, and a
    champion must not come from work that is not in the workspace.

    `evidence` (the evaluation with its bootstrap comparisons, interval and slices) makes the champion
    move only on evidence; without it (an older metrics.json) the champion moves on a strictly better score.
    """
    checks: dict[str, bool] = {}
    reasons: list[str] = []
    comparisons = dict(evidence.comparisons) if evidence else {}
    confident = set(params.confidence_applies_to)
    low, high = (evidence.interval if evidence and evidence.interval else None) or (None, None)
    for metric, bound in params.thresholds.items():
        if metric not in candidate:
            checks[f"threshold.{metric}"] = False
            reasons.append(f"threshold on {metric}: the model has no {metric} metric")
            continue
        ok = at_least(metric, candidate[metric], bound)
        relation = "<=" if lower_is_better(metric) else ">="
        shown = f"{metric} {candidate[metric]:.4f}"
        if metric == primary and low is not None and high is not None:
            shown += f" (95 % interval {low:.4f} to {high:.4f})"
            if "thresholds" in confident:  # the cautious end of the interval must meet it
                ok = ok and at_least(metric, high if lower_is_better(metric) else low, bound)
        checks[f"threshold.{metric}"] = ok
        reasons.append(f"{shown} {'meets' if ok else 'misses'} threshold {relation} {bound}")
    value = candidate[primary]
    if params.require_beat_baseline:
        reference = baseline[primary]
        ok, evidence_text = with_confidence(
            is_better(primary, value, reference), comparisons.get("baseline"), params, "baseline" in confident
        )
        checks["beats_baseline"] = ok
        reasons.append(
            f"{primary} {value:.4f} {'beats' if ok else 'does not beat'} the baseline's {reference:.4f}{evidence_text}"
        )
    if params.require_beat_reference:
        strong = reference_scores or {}
        reference_name = (evidence.reference_name if evidence else None) or strong.get("name")
        if primary not in strong:
            checks["beats_reference"] = False
            reasons.append(
                "register.require_beat_reference is set, but there is no reference score (evaluate.reference)"
            )
        else:
            ok, evidence_text = with_confidence(
                is_better(primary, value, strong[primary]),
                comparisons.get("reference"),
                params,
                "reference" in confident,
            )
            checks["beats_reference"] = ok
            verdict = "beats" if ok else "does not beat"
            reasons.append(
                f"{primary} {value:.4f} {verdict} the reference's ({reference_name}) "
                f"{strong[primary]:.4f}{evidence_text}"
            )
    if params.require_beat_champion:
        if champion is None:
            checks["beats_champion"] = True
            reasons.append("there is no current champion")
        elif (reference := champion.metric(primary)) is None:
            checks["beats_champion"] = True
            # Why it was not scored (or that it has no such metric).
            reasons.append(f"{champion.summary(primary)}; judged on the thresholds and the baseline alone")
        else:
            better = is_better(primary, value, reference)
            ok, evidence_text = with_confidence(better, champion.comparison, params, True)
            checks["beats_champion"] = ok
            if ok:
                verdict = "beats"
            elif better:
                verdict = "is better than, but not surely better than,"
            else:
                verdict = "ties with" if value == reference else "is worse than"
            keeps = "" if ok else "; the champion stays"
            note = split_size_note(evidence.test_rows, primary) if evidence else ""
            reasons.append(
                f"{primary} {value:.4f} {verdict} the champion's (version {champion.version}) {reference:.4f} "
                f"on the same test rows{evidence_text}{keeps}{f' ({note})' if note and not ok else ''}"
            )
        sliced = evidence is not None and len(evidence.slices) > 1
        if sliced and params.max_slice_regression is not None and champion and champion.metric(primary) is not None:
            from tasks.evidence import worst_slice

            worst = worst_slice(evidence.slices, primary, params.min_slice_rows)
            gap = 0.0 if worst is None else abs(worst.candidate - worst.champion)
            ok = gap <= params.max_slice_regression
            checks["no_slice_regression"] = ok
            if worst is None:
                reasons.append(f"on no slice of {params.min_slice_rows} rows or more is it worse than the champion")
            else:
                verdict = "more than" if not ok else "within"
                reasons.append(
                    f"on slice {worst.key} ({worst.rows} rows) {primary} {worst.candidate:.4f} is {gap:.4f} worse "
                    f"than the champion's {worst.champion:.4f}, {verdict} register.max_slice_regression "
                    f"{params.max_slice_regression}"
                )
    if dvc_experiment:
        checks["not_a_dvc_experiment"] = False
        reasons.append(
            f"DVC experiment {dvc_experiment} does not move champion; to promote it: "
            f"`dvc exp apply {dvc_experiment}` then `dvc repro --force --single-item register`"
        )
    checks["smoke_test"] = smoke_test_ok
    if not smoke_test_ok:
        reasons.append("the serving smoke test failed: the registered files are not those that loaded and predicted")
    return Decision(promote=all(checks.values()), reasons=reasons, checks=checks)


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
