"""The ``champion`` alias and the live version move together: helpers to read, move and restore it, and serve it.

Only plain ``MlflowClient`` calls, so they work with any client the caller built.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from shipyard.errors import RegistryError, ServingError
from shipyard.lease import lease
from shipyard.registry.aliases import CHAMPION, AliasMove, alias_lease, move, record
from shipyard.registry.lineage import RunContext
from shipyard.rollout.base import ModelRef, RolloutResult, RolloutTarget
from shipyard.storage import Store

log = logging.getLogger(__name__)

# Rollouts of one model are serialised by a lease in the store that beats while the rollout runs.
ROLLOUT_HEARTBEAT = 20.0
ROLLOUT_TTL = 180.0


def serve_champion(client: Any, store: Store, target: RolloutTarget, model: ModelRef,
                   example: list[list[float]] | None) -> RolloutResult:
    """Serve ``model``, the champion this pipeline saw, or the newer champion another pipeline made meanwhile.

    Rollouts of one model take turns (``registry/<model>/rollout`` lease in the store): a target swaps one
    version at a time, and the last rollout to run must serve the champion as it is then, not an older one
    a slower pipeline promoted first. ``example`` is for ``model``; another version is checked on its own.
    """
    serving = already_serving(client, target, model)
    if serving is not None:  # a rerun: nothing moves, so no turn is taken (and nothing is written)
        log.info("%s version %s already serves at %s", model.model_name, model.version, serving.endpoint)
        return serving
    with lease(store, ("registry", model.model_name, "rollout"), purpose=f"roll out {model.uri}",
               ttl=ROLLOUT_TTL, wait=None, poll=0.5, heartbeat=ROLLOUT_HEARTBEAT, error=ServingError):
        current = champion_version(client, model.model_name)
        if current is not None and current != model.version:
            log.info("%s of %s moved to version %s since version %s was promoted; serving version %s",
                     CHAMPION, model.model_name, current, model.version, current)
            model, example = ModelRef(model_name=model.model_name, version=current), None
        return target.roll_out(model, example)


def already_serving(client: Any, target: RolloutTarget, model: ModelRef) -> RolloutResult | None:
    """Return the rollout's answer when ``model`` is both the champion and what ``target`` serves, else None."""
    live = target.live()
    if live is None or live.model != model or champion_version(client, model.model_name) != model.version:
        return None
    return RolloutResult(target=target.name, model=model, previous=model, endpoint=live.endpoint, reused=True,
                         predictions=None)


def champion_version(client: Any, model_name: str) -> str | None:
    """Return the version holding ``champion``, or None if no version does."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"cannot read the {CHAMPION} alias of {model_name}: {exc.message}") from exc


def set_champion(client: Any, model: ModelRef) -> None:
    """Point ``champion`` at ``model`` (the version must exist)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(model.model_name, model.version)
        client.set_registered_model_alias(model.model_name, CHAMPION, model.version)
    except MlflowException as exc:
        raise RegistryError(f"cannot make {model.uri} the {CHAMPION}: {exc.message}") from exc
    log.info("%s of %s is now version %s", CHAMPION, model.model_name, model.version)


def choose_champion(client: Any, store: Store, model: ModelRef, reason: str, context: RunContext,
                    actor: str) -> None:
    """Make ``model`` the champion by hand (``shipyard rollout to``/``undo``), as the gate moves it.

    Under the model's alias lease, so no gate, promotion or rollback moves the alias at the same time, and
    recorded in the model's alias history (``shipyard models history``).
    """
    from mlflow.exceptions import MlflowException

    try:  # a version that does not exist fails before the lease writes anything
        client.get_model_version(model.model_name, model.version)
    except MlflowException as exc:
        raise RegistryError(f"cannot make {model.uri} the {CHAMPION}: {exc.message}") from exc
    with alias_lease(store, model.model_name, purpose=f"{actor}: {reason}"):
        move(client, store, model.model_name, [(CHAMPION, model.version)], reason, context, actor=actor)


def restore_champion(client: Any, model_name: str, version: str | None, moved_to: str | None = None,
                     history: tuple[Store, RunContext] | None = None) -> None:
    """Put ``champion`` back on ``version`` (None: remove it), if it moved.

    With ``moved_to``, the version this pipeline made champion or set out to serve, only while ``champion``
    still points there: a champion another pipeline made since is that pipeline's to serve or restore, so a
    failed rollout never undoes a later promotion. With ``history``, a restore is recorded in the model's
    alias history (by ``rollback``). Callers hold the model's alias lease.
    """
    from mlflow.exceptions import MlflowException

    current = champion_version(client, model_name)
    if current == version:
        return
    if moved_to is not None and current != moved_to:
        log.warning("%s of %s left on version %s: another pipeline moved it there after version %s", CHAMPION,
                    model_name, current or "none", moved_to)
        return
    try:
        if version is None:
            client.delete_registered_model_alias(model_name, CHAMPION)
        else:
            client.set_registered_model_alias(model_name, CHAMPION, version)
    except MlflowException as exc:
        raise RegistryError(f"cannot restore the {CHAMPION} alias of {model_name}: {exc.message}") from exc
    log.warning("%s of %s restored to version %s", CHAMPION, model_name, version or "none")
    if history is not None:
        store, context = history
        record(store, AliasMove(at=datetime.now(UTC), model_name=model_name, alias=CHAMPION, version=version,
                                replaced=current, reason=f"a failed rollout of version {current} rolled back",
                                flow_run_id=context.flow_run_id, flow_run_url=context.flow_run_url,
                                actor="rollback"))
