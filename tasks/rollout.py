"""Tasks: serve a version on the configured target, and keep the `champion` alias with what is live.

Inside a flow's ``transaction()``, :func:`hold_champion` remembers where `champion` pointed; if a later
task of the transaction fails (a rollout the target rolled back), its rollback hook puts the alias back,
so the live version and the champion go back together.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.transactions import Transaction, get_transaction

from shipyard import registry, rollout
from shipyard.params import RolloutParams
from shipyard.registry.aliases import CHAMPION, alias_lease
from shipyard.rollout.base import ModelRef, RolloutResult
from shipyard.rollout.champion import champion_version, choose_champion, restore_champion, serve_champion
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from tasks.register import run_context


@task(cache_policy=NO_CACHE)
def hold_champion(model_name: str) -> str | None:
    """Remember the champion version, for the rollback hook."""
    held = champion_version(registry.client(load_settings()), model_name)
    transaction = get_transaction()
    if transaction is not None:
        transaction.set("model_name", model_name)
        transaction.set("champion", held)
    return held


@hold_champion.on_rollback
def _put_champion_back(transaction: Transaction) -> None:
    settings, name = load_settings(), transaction.get("model_name")
    store = filesystem(settings)
    with alias_lease(store, name, purpose=f"restore the {CHAMPION} of {name}"):
        restore_champion(registry.client(settings), name, transaction.get("champion"),
                         moved_to=transaction.get("serving", None), history=(store, run_context()))


@task(cache_policy=NO_CACHE)
def promote_version(model: ModelRef) -> None:
    """Make ``model`` the champion (the rollout that follows serves it), under the alias lease, in its history."""
    settings = load_settings()
    choose_champion(registry.client(settings), filesystem(settings), model,
                    f"rolled out by hand: version {model.version}", run_context(), actor="rollout")


@task(cache_policy=NO_CACHE)
def roll_out(model: ModelRef, example: list[list[float]] | None, params: RolloutParams) -> RolloutResult:
    """Serve ``model`` on the configured target; a failed load, warm-up or smoke test leaves the old one live."""
    logger = get_run_logger()
    transaction = get_transaction()
    if transaction is not None:  # for the rollback hook: the champion it may put back is the one this run moved
        transaction.set("serving", model.version)
    settings = load_settings()
    client = registry.client(settings)  # also points MLflow at the registry for the smoke test's predictions
    result = serve_champion(client, filesystem(settings), rollout.target(settings), model,
                            example if params.smoke_test else None)
    verb = "already serving" if result.reused else "now serving"
    logger.info("%s %s version %s at %s (%s)", verb, model.model_name, result.model.version, result.endpoint,
                result.target)
    if result.predictions is not None:
        logger.info("smoke test passed: %d predictions equal to MLflow's", len(result.predictions))
    return result


__all__: list[Any] = ["hold_champion", "promote_version", "roll_out"]
