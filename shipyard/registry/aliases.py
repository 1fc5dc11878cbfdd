"""Move aliases and keep the audit trail: every move is appended to ``registry/<model>/history/`` in the store.

Callers hold the model's alias lease (see :func:`alias_lease`). A move that fails half-way puts back the
aliases it already changed, so a failed promotion leaves the aliases as they were.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from shipyard.errors import RegistryError
from shipyard.registry.lease import lease
from shipyard.registry.lineage import RunContext
from shipyard.registry.tracking import aliases, translate, uri_of
from shipyard.storage import Store

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"


class AliasMove(BaseModel):
    """One alias set (or removed, ``version`` None) on a registered model, and why."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    model_name: str
    alias: str
    version: str | None
    replaced: str | None
    reason: str
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    actor: str = "pipeline"


@contextmanager
def alias_lease(store: Store, model_name: str, purpose: str) -> Iterator[int]:
    """Hold the lease that serialises alias moves of ``model_name`` across processes and machines."""
    with lease(store, ("registry", model_name, "aliases"), purpose=purpose) as number:
        yield number


def move(mlflow_client: MlflowClient, store: Store, model_name: str, targets: list[tuple[str, str | None]],
         reason: str, context: RunContext, actor: str = "pipeline") -> list[AliasMove]:
    """Point each alias at its version (None removes it), in order; on failure restore the ones already moved."""
    before = aliases(mlflow_client, model_name)
    done: list[tuple[str, str | None]] = []
    try:
        for alias, version in targets:
            if before.get(alias) != version:
                _set(mlflow_client, model_name, alias, version)
                done.append((alias, version))
    except RegistryError as exc:
        _restore(mlflow_client, model_name, before, done, exc)
        raise
    now = datetime.now(UTC)
    moves = [AliasMove(at=now, model_name=model_name, alias=a, version=v, replaced=before.get(a), reason=reason,
                       flow_run_id=context.flow_run_id, flow_run_url=context.flow_run_url, actor=actor)
             for a, v in done]
    for order, entry in enumerate(moves):
        record(store, entry, order)
        log.info("%s@%s: %s -> %s (%s)", model_name, entry.alias, entry.replaced, entry.version, reason)
    return moves


def _set(mlflow_client: MlflowClient, model_name: str, alias: str, version: str | None) -> None:
    with translate(uri_of(mlflow_client)):
        if version is None:
            mlflow_client.delete_registered_model_alias(model_name, alias)
        else:
            mlflow_client.set_registered_model_alias(model_name, alias, version)


def _restore(mlflow_client: MlflowClient, model_name: str, before: dict[str, str],
             done: list[tuple[str, str | None]], cause: RegistryError) -> None:
    for alias, _ in reversed(done):
        try:
            _set(mlflow_client, model_name, alias, before.get(alias))
        except RegistryError as exc:
            raise RegistryError(f"{cause}; and putting alias '{alias}' of {model_name} back to version "
                                f"{before.get(alias)} failed too ({exc}): check with 'shipyard models show "
                                f"{model_name}'") from cause


def record(store: Store, entry: AliasMove, order: int = 0) -> None:
    """Append one alias move to the model's history (create-only, never rewritten).

    Names sort by time, then by ``order`` within one move of several aliases.
    """
    name = f"{entry.at.strftime('%Y%m%dT%H%M%S%fZ')}-{order}-{entry.alias}-{uuid.uuid4().hex[:8]}.json"
    store.write_bytes(entry.model_dump_json().encode(), "registry", entry.model_name, "history", name,
                      create_only=True)


def history(store: Store, model_name: str) -> list[AliasMove]:
    """Return every recorded alias move of ``model_name``, oldest first."""
    names = sorted(n for n in store.list("registry", model_name, "history") if n.endswith(".json"))
    return [AliasMove.model_validate_json(store.read_bytes("registry", model_name, "history", n)) for n in names]
