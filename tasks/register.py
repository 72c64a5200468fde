"""Register: a gated step. Every candidate becomes a registry version; only a blessed one
moves the `champion` alias, the others get `challenger`, and the reason is kept.

Blessed means: passes the thresholds in params, beats the scikit-learn baseline,
is at least as good as the current champion on the primary metric, and survives a
serving smoke test (train loaded the logged model back through MLflow and it predicted
what the trained model does; the registered files are those same bytes).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from kerasflow.config import RegisterParams
from kerasflow.metrics import at_least, is_better, lower_is_better
from kerasflow.records import ChampionScore

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Decision:
    """The gate's verdict for one candidate."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alias": self.alias}


@dataclass(frozen=True)
class Registration:
    """What register wrote (reports/registration.json): the version, the champion it was judged against
    (re-scored on the same rows), the serving check's detail and the gate's decision."""

    model_name: str
    version: str
    run_id: str
    decision: Decision
    champion: ChampionScore | None = None
    smoke_test: str = ""

    @property
    def previous_champion(self) -> str | None:
        return self.champion.version if self.champion else None

    @property
    def failed_checks(self) -> list[str]:
        return [check for check, passed in self.decision.checks.items() if not passed]

    def to_dict(self) -> dict[str, Any]:
        """As on disk (and in the run's registration.json): the decision's fields at the top level."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "previous_champion": self.previous_champion,
            "champion_rescored": self.champion.to_dict() if self.champion else None,
            "smoke_test": self.smoke_test,
            "run_id": self.run_id,
            **self.decision.to_dict(),
        }


def decide(
    candidate: dict[str, float],
    baseline: dict[str, float],
    champion: ChampionScore | None,
    primary: str,
    params: RegisterParams,
    smoke_test_ok: bool = True,
    dvc_experiment: str | None = None,
    reference_scores: dict[str, Any] | None = None,
) -> Decision:
    """Apply thresholds, the baseline, the current champion and the smoke test; explain each.

    `champion` is the current champion re-scored on this run's test split (`tasks.champion.rescore`:
    its version and `test` metrics, or why it was `skipped`), or None when there is none.
    A DVC experiment (`dvc_experiment`, its name) never promotes: it may be thrown away, and a
    champion must not come from work that is not in the workspace.
    """
    checks: dict[str, bool] = {}
    reasons: list[str] = []
    for metric, bound in params.thresholds.items():
        if metric not in candidate:
            checks[f"threshold.{metric}"] = False
            reasons.append(f"threshold on {metric}: the model has no {metric} metric")
            continue
        ok = at_least(metric, candidate[metric], bound)
        checks[f"threshold.{metric}"] = ok
        relation = "<=" if lower_is_better(metric) else ">="
        reasons.append(f"{metric} {candidate[metric]:.4f} {'meets' if ok else 'misses'} threshold {relation} {bound}")
    value = candidate[primary]
    if params.require_beat_baseline:
        reference = baseline[primary]
        ok = is_better(primary, value, reference)
        checks["beats_baseline"] = ok
        reasons.append(f"{primary} {value:.4f} {'beats' if ok else 'does not beat'} the baseline's {reference:.4f}")
    if params.require_beat_reference:
        strong = reference_scores or {}
        if primary not in strong:
            checks["beats_reference"] = False
            reasons.append(
                "register.require_beat_reference is set, but there is no reference score (evaluate.reference)"
            )
        else:
            ok = is_better(primary, value, strong[primary])
            checks["beats_reference"] = ok
            verdict = "beats" if ok else "does not beat"
            reasons.append(
                f"{primary} {value:.4f} {verdict} the reference's ({strong.get('name')}) {strong[primary]:.4f}"
            )
    if params.require_beat_champion:
        if champion is None:
            checks["at_least_champion"] = True
            reasons.append("there is no current champion")
        elif (reference := champion.metric(primary)) is None:
            checks["at_least_champion"] = True
            # Why it was not scored (or that it has no such metric).
            reasons.append(f"{champion.summary(primary)}; judged on the thresholds and the baseline alone")
        else:
            ok = at_least(primary, value, reference)
            checks["at_least_champion"] = ok
            verdict = "is at least as good as" if ok else "is worse than"
            reasons.append(
                f"{primary} {value:.4f} {verdict} the champion's (version {champion.version}) {reference:.4f} "
                "on the same test rows"
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
