"""The MLflow side: register trained models with lineage, gate them against the champion, move aliases.

Functions take an ``MlflowClient`` built by :func:`client`; nothing here touches MLflow at import.
See docs/registry.md.

    tracking   the client, error translation (only RESOURCE_DOES_NOT_EXIST means absent), alias reads
    lineage    the model-version tags that say where a version came from
    register   log the run and register a version, once per training key (store lease)
    holdout    the frozen holdout and scoring both models on it
    gate       the decision (thresholds, margin, load check, approval) and the alias moves
    aliases    alias moves with rollback on failure, and the append-only history in the store
    lease      mutual exclusion from create-only objects in the store
"""

from shipyard.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS, AliasMove, history
from shipyard.registry.gate import (
    Approval,
    GateDecision,
    Registration,
    already_champion,
    judge,
    load_failure,
    promote,
    report_markdown,
)
from shipyard.registry.holdout import Holdout, HoldoutScores
from shipyard.registry.lineage import TAG_TRAIN_KEY, RunContext
from shipyard.registry.register import PIP_REQUIREMENTS, Registered, find_registered, register, registered_version
from shipyard.registry.tracking import SETTING, alias_version, aliases, check, client, ensure_experiment, translate

__all__ = ["CHALLENGER", "CHAMPION", "PIP_REQUIREMENTS", "PREVIOUS", "SETTING", "TAG_TRAIN_KEY", "AliasMove",
           "Approval", "GateDecision", "Holdout", "HoldoutScores", "Registered", "Registration", "RunContext",
           "alias_version", "aliases", "already_champion", "check", "client", "ensure_experiment", "find_registered",
           "history", "judge", "load_failure", "promote", "register", "registered_version", "report_markdown",
           "translate"]
