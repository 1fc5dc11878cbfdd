"""The champion/challenger gate: evaluate both on the frozen holdout, check thresholds and margin, move aliases.

Everything from reading the champion to moving the aliases happens under the model's alias lease, so two
pipelines at once are judged one after the other, each against the champion the other left.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import RegistryError
from shipyard.params import RegisterParams
from shipyard.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS, alias_lease, move
from shipyard.registry.holdout import TAG_HOLDOUT, HoldoutScores, holdout_for, score, training_of
from shipyard.registry.lineage import TAG_TRAIN_KEY, RunContext, describe
from shipyard.registry.register import Registered
from shipyard.registry.tracking import aliases, model_tags, translate, uri_of
from shipyard.settings import Settings
from shipyard.storage import Store
from shipyard.training import TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

Outcome = Literal["promoted", "challenger", "kept", "awaiting-approval", "rejected"]
TAG_DECISION = "shipyard.gate.decision"
TAG_REASON = "shipyard.gate.reason"
TAG_MIN_METRICS = "shipyard.gate.min_metrics"
HOLDOUT_METRIC_PREFIX = "shipyard.holdout."


class Approval(BaseModel):
    """A person's answer to "promote this version?"."""

    model_config = ConfigDict(frozen=True)

    approved: bool
    comment: str = ""


class GateDecision(BaseModel):
    """What the gate decided about one version, and on which evidence."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    reason: str
    metric: str
    champion_before: str | None = Field(description="Version that held 'champion' when the gate ran.")
    scores: HoldoutScores | None = None
    approval: Approval | None = None

    def table(self, version: str) -> list[dict[str, str]]:
        """Return the champion-vs-challenger rows (one per metric) for a report."""
        if self.scores is None:
            return []
        mine = self.scores.metrics.get(version, {})
        theirs = self.scores.metrics.get(self.champion_before or "", {})
        names = sorted(set(mine) | set(theirs))
        return [{"metric": n, f"challenger v{version}": _fmt(mine.get(n)),
                 f"champion v{self.champion_before or '-'}": _fmt(theirs.get(n))} for n in names]


class Registration(BaseModel):
    """A registered version and the gate's decision about it."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str
    run_id: str
    experiment_id: str
    reused: bool
    input_example: list[list[float]] = Field(description="Rows the smoke test sends.")
    decision: GateDecision
    champion_version: str | None

    @property
    def promoted(self) -> bool:
        """Tell whether this run made the version champion."""
        return self.decision.outcome == "promoted"

    @property
    def is_champion(self) -> bool:
        """Tell whether the version is champion now (promoted now or before): the one to serve."""
        return self.champion_version == self.version

    @property
    def model_uri(self) -> str:
        """Return the registry URI of this version."""
        return f"models:/{self.model_name}/{self.version}"


def report_markdown(registration: Registration) -> str:
    """Return the gate report: decision, reason, holdout and the champion-vs-challenger table."""
    decision = registration.decision
    lines = [f"### Gate: {registration.model_name} version {registration.version}: **{decision.outcome}**", "",
             decision.reason, ""]
    if decision.scores is not None:
        lines += [f"Holdout: {decision.scores.holdout} ({decision.scores.rows} rows, digest "
                  f"`{decision.scores.rows_digest}`), both models evaluated in this run.", ""]
        rows = decision.table(registration.version)
        if rows:
            header = list(rows[0])
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    lines += ["", f"Champion now: version {registration.champion_version or 'none'}"]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def judge(mlflow_client: MlflowClient, settings: Settings, store: Store, registered: Registered,
          result: TrainResult, params: RegisterParams, context: RunContext,
          approval: Approval | None = None) -> Registration:
    """Run the gate for ``registered`` and move the aliases it decides; return the registration with the decision."""
    name, version = registered.model_name, registered.version
    kept = already_champion(mlflow_client, registered, params.metric)  # a rerun: nothing to judge or write
    if kept is not None:
        return kept
    with alias_lease(store, name, purpose=f"gate {name} v{version}"):
        before = aliases(mlflow_client, name)
        champion = before.get(CHAMPION)
        if champion == version:
            return _kept(registered, params.metric)
        decision = _decide(mlflow_client, settings, store, registered, result, params, champion, approval)
        if decision.outcome == "promoted":
            targets: list[tuple[str, str | None]] = [(PREVIOUS, champion)] if champion else []
            targets.append((CHAMPION, version))
            if before.get(CHALLENGER) == version:
                targets.append((CHALLENGER, None))
            move(mlflow_client, store, name, targets, decision.reason, context)
            _record_holdout(mlflow_client, name, decision, params)
        elif decision.outcome in ("challenger", "rejected"):
            move(mlflow_client, store, name, [(CHALLENGER, version)], decision.reason, context)
        _record(mlflow_client, name, version, decision, result)
        now = aliases(mlflow_client, name).get(CHAMPION)
    log.info("gate for %s version %s: %s (%s)", name, version, decision.outcome, decision.reason)
    return _registration(registered, decision, now)


def already_champion(mlflow_client: MlflowClient, registered: Registered, metric: str) -> Registration | None:
    """Return the gate's answer for a version that already holds ``champion`` ("kept"), else None; reads only."""
    if aliases(mlflow_client, registered.model_name).get(CHAMPION) != registered.version:
        return None
    return _kept(registered, metric)


def _kept(registered: Registered, metric: str) -> Registration:
    decision = GateDecision(outcome="kept", reason=f"version {registered.version} is already {CHAMPION}",
                            metric=metric, champion_before=registered.version)
    return _registration(registered, decision, registered.version)


def _registration(registered: Registered, decision: GateDecision, champion: str | None) -> Registration:
    return Registration(**registered.model_dump(), decision=decision, champion_version=champion)


def _decide(mlflow_client: MlflowClient, settings: Settings, store: Store, registered: Registered,
            result: TrainResult, params: RegisterParams, champion: str | None,
            approval: Approval | None) -> GateDecision:
    version, metric = registered.version, params.metric
    models = {version: result}
    if champion is not None:
        with translate(uri_of(mlflow_client)):
            tags = mlflow_client.get_model_version(registered.model_name, champion).tags
        models[champion] = training_of(store, tags.get(TAG_TRAIN_KEY), f"champion version {champion}")
    holdout = holdout_for(model_tags(mlflow_client, registered.model_name).get(TAG_HOLDOUT), params.holdout, result)
    scores = score(store, settings.home / "cache" / "datasets", holdout, result, models)
    outcome, reason = verdict(scores.metrics[version], scores.metrics.get(champion or ""), champion, params)
    if outcome == "promoted":
        broken = load_failure(mlflow_client, registered.model_name, version)
        if broken:
            outcome, reason = "challenger", f"version {version} fails to load ({broken}); never promoted"
    if outcome == "promoted" and params.require_approval:
        if approval is None:
            outcome, reason = "awaiting-approval", f"{reason}; waiting for approval"
        elif not approval.approved:
            outcome, reason = "rejected", f"rejected by the approver: {approval.comment or 'no comment'}"
        else:
            reason = f"{reason}; approved: {approval.comment or 'no comment'}"
    return GateDecision(outcome=outcome, reason=reason, metric=metric, champion_before=champion, scores=scores,
                        approval=approval)


def verdict(mine: dict[str, float], theirs: dict[str, float] | None, champion: str | None,
            params: RegisterParams) -> tuple[Outcome, str]:
    """Apply the absolute thresholds, then the margin over the champion (higher is better)."""
    metric = params.metric
    if metric not in mine:
        return "challenger", f"the recipe's evaluate returned no '{metric}' (it has {', '.join(sorted(mine))})"
    low = [f"{m} {mine.get(m, float('nan')):.4f} < minimum {v}" for m, v in sorted(params.min_metrics.items())
           if m not in mine or mine[m] < v]
    if low:
        return "challenger", "below the thresholds: " + "; ".join(low)
    if champion is None or theirs is None:
        return "promoted", f"first {CHAMPION}: {metric} {mine[metric]:.4f} on the holdout"
    if metric not in theirs:  # a champion whose recipe did not report the metric is beaten by one that does
        return "promoted", (f"{metric} {mine[metric]:.4f}; {CHAMPION} v{champion} reports no '{metric}' "
                            "on the same holdout")
    if mine[metric] >= theirs[metric] + params.promotion_margin:
        return "promoted", (f"{metric} {mine[metric]:.4f} beats {CHAMPION} v{champion}'s {theirs[metric]:.4f} "
                            f"by at least the margin {params.promotion_margin} on the same holdout")
    return "challenger", (f"{metric} {mine[metric]:.4f} does not beat {CHAMPION} v{champion}'s "
                          f"{theirs[metric]:.4f} by the margin {params.promotion_margin} on the same holdout")


def load_failure(mlflow_client: MlflowClient, model_name: str, version: str) -> str | None:
    """Load the registered model as it will be served; return why it failed, or None if it loads."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with translate(uri_of(mlflow_client)):
        mlflow_client.get_model_version(model_name, version)  # an outage fails here, not as "does not load"
    try:
        mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    except (MlflowException, OSError, RuntimeError, ValueError, KeyError, ImportError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


def _record(mlflow_client: MlflowClient, name: str, version: str, decision: GateDecision,
            result: TrainResult) -> None:
    """Write the decision on the version (tags and description), for any MLflow client to read."""
    tags = {TAG_DECISION: decision.outcome, TAG_REASON: decision.reason[:4000]}
    if decision.scores is not None:
        tags["shipyard.gate.holdout"] = str(decision.scores.holdout.dataset)
        tags["shipyard.gate.holdout_rows"] = str(decision.scores.rows)
        tags["shipyard.gate.holdout_digest"] = decision.scores.rows_digest
        tags["shipyard.gate.champion_version"] = decision.champion_before or "none"
        tags.update({f"{HOLDOUT_METRIC_PREFIX}{k}": f"{v:.6g}" for k, v in decision.scores.metrics[version].items()})
    if decision.approval is not None:
        tags["shipyard.gate.approval"] = "approved" if decision.approval.approved else "rejected"
        tags["shipyard.gate.approval_comment"] = decision.approval.comment[:4000]
    with translate(uri_of(mlflow_client)):
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, value)
        mlflow_client.update_model_version(name, version, description=describe(result, decision.metric,
                                                                               decision.outcome))


def _record_holdout(mlflow_client: MlflowClient, name: str, decision: GateDecision, params: RegisterParams) -> None:
    """Freeze the holdout on the model the first time a champion is made; keep the thresholds for promote."""
    with translate(uri_of(mlflow_client)):
        if decision.scores is not None and TAG_HOLDOUT not in model_tags(mlflow_client, name):
            mlflow_client.set_registered_model_tag(name, TAG_HOLDOUT, decision.scores.holdout.model_dump_json())
        mlflow_client.set_registered_model_tag(name, TAG_MIN_METRICS, json.dumps(params.min_metrics))


def promote(mlflow_client: MlflowClient, settings: Settings, store: Store, model_name: str, version: str,
            reason: str, context: RunContext, actor: str) -> GateDecision:
    """Make ``version`` champion by hand: same holdout, thresholds and load check as the gate, no margin."""
    _check_promotable(mlflow_client, model_name, version)  # bad input fails before the lease writes anything
    with alias_lease(store, model_name, purpose=f"{actor}: promote {model_name} v{version}"):
        before = aliases(mlflow_client, model_name)
        champion = before.get(CHAMPION)
        if champion == version:
            raise RegistryError(f"{model_name} version {version} is already {CHAMPION}")
        with translate(uri_of(mlflow_client)):
            tags = mlflow_client.get_model_version(model_name, version).tags
        result = training_of(store, tags.get(TAG_TRAIN_KEY), f"{model_name} version {version}")
        mtags = model_tags(mlflow_client, model_name)
        thresholds = json.loads(mtags.get(TAG_MIN_METRICS, "{}"))
        params = RegisterParams(model_name=model_name, min_metrics=thresholds, promotion_margin=0.0,
                                metric=next(iter(thresholds), "val_accuracy"))
        holdout = holdout_for(mtags.get(TAG_HOLDOUT), None, result)
        scores = score(store, settings.home / "cache" / "datasets", holdout, result, {version: result})
        low = [f"{m} {scores.metrics[version].get(m, float('nan')):.4f} < minimum {v}" for m, v in thresholds.items()
               if scores.metrics[version].get(m, float("-inf")) < v]
        if low:
            raise RegistryError(f"{model_name} version {version} is below the thresholds: {'; '.join(low)}; "
                                "not promoted")
        broken = load_failure(mlflow_client, model_name, version)
        if broken:
            raise RegistryError(f"{model_name} version {version} fails to load ({broken}); not promoted")
        targets: list[tuple[str, str | None]] = [(PREVIOUS, champion)] if champion else []
        targets += [(CHAMPION, version)] + ([(CHALLENGER, None)] if before.get(CHALLENGER) == version else [])
        move(mlflow_client, store, model_name, targets, reason, context, actor=actor)
        decision = GateDecision(outcome="promoted", reason=reason, metric=params.metric, champion_before=champion,
                                scores=scores)
        _record(mlflow_client, model_name, version, decision, result)
    return decision


def _check_promotable(mlflow_client: MlflowClient, model_name: str, version: str) -> None:
    """Fail on a version that is no number, does not exist or is champion already (checked again under the lease)."""
    if not version.isdigit():
        raise RegistryError(f"'{version}' is not a version number of {model_name} "
                            f"(see its versions with: shipyard models show {model_name})")
    with translate(uri_of(mlflow_client)):
        mlflow_client.get_model_version(model_name, version)
    if aliases(mlflow_client, model_name).get(CHAMPION) == version:
        raise RegistryError(f"{model_name} version {version} is already {CHAMPION}")
