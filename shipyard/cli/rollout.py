"""``shipyard rollout status|to|undo``: what is live where, and moving it with the pipeline's checks."""

from __future__ import annotations

import argparse
from typing import Any

from shipyard.cli.runtime import choose_prefect_api
from shipyard.errors import ConfigError, ServingError, ShipyardError
from shipyard.rollout.base import Live
from shipyard.settings import Settings, load_settings


def register(sub: Any) -> None:
    """Add ``rollout status``, ``rollout to`` and ``rollout undo``."""
    rollout = sub.add_parser("rollout", help="show or change the served model version",
                             description="Show what the rollout target (SHIPYARD_ROLLOUT_TARGET) serves, serve "
                             "another version, or go back to the previous one. The champion alias moves with "
                             "what is live; a failed rollout changes neither.")
    actions = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="what is live where: target, version, endpoint, champion")
    status.set_defaults(func=cmd_status)
    to = actions.add_parser("to", help="serve a registered version (load, warm, check, switch) and make it champion")
    to.add_argument("version", help="model version number")
    to.add_argument("--model-name", default=None, help="registered model (default: the one served now)")
    to.set_defaults(func=cmd_to)
    undo = actions.add_parser("undo", help="serve the version served before this one, with the same checks")
    undo.set_defaults(func=cmd_undo)


def _live(settings: Settings) -> Live | None:
    from shipyard import rollout

    return rollout.target(settings).live()


def cmd_status(args: argparse.Namespace) -> int:
    """Print the target, what it serves, and where the champion alias points."""
    settings = load_settings()
    live = _live(settings)
    _row("target", settings.rollout_target.value)
    if live is None:
        _row("live", "nothing (run 'shipyard demo' or 'shipyard rollout to VERSION --model-name NAME')")
        return 0
    _row("live", f"{live.model.model_name} version {live.model.version}")
    _row("endpoint", f"{live.endpoint}/invocations")
    previous = live.detail.get("previous_version")
    _row("previous", f"version {previous}" if previous else "none")
    champion = _champion(settings, live.model.model_name)
    agrees = "" if champion == live.model.version else "  (differs from live: run 'shipyard rollout to')"
    _row("champion", f"version {champion or 'none'}{agrees}")
    for key in sorted(set(live.detail) - {"previous_version"}):
        _row(key, live.detail[key])
    return 0


def _champion(settings: Settings, model_name: str) -> str | None:
    from shipyard import registry
    from shipyard.rollout.champion import champion_version

    return champion_version(registry.client(settings), model_name)


def cmd_to(args: argparse.Namespace) -> int:
    """Serve ``version`` through the rollout flow."""
    settings = load_settings()
    name = args.model_name
    if name is None:
        live = _live(settings)
        if live is None:
            raise ServingError("nothing is served, so the model is unknown: pass --model-name")
        name = live.model.model_name
    return _run(settings, name, str(args.version))


def cmd_undo(args: argparse.Namespace) -> int:
    """Serve the previous version through the rollout flow."""
    settings = load_settings()
    live = _live(settings)
    previous = live.detail.get("previous_version") if live else None
    if live is None or not previous:
        raise ServingError("nothing to undo: no version was served before the live one "
                           "(see 'shipyard rollout status')")
    return _run(settings, live.model.model_name, previous)


def _check_version(settings: Settings, model_name: str, version: str) -> None:
    """Fail with one line, before any flow starts, unless ``version`` of ``model_name`` is registered."""
    from shipyard import registry

    if not version.isdigit():
        raise ConfigError(f"'{version}' is not a version number (see them with: shipyard models show {model_name})")
    registry.check(settings)
    client = registry.client(settings)
    with registry.translate(settings.resolved_mlflow_uri()):
        client.get_model_version(model_name, version)


def _run(settings: Settings, model_name: str, version: str) -> int:
    _check_version(settings, model_name, version)  # bad input fails before anything runs
    choose_prefect_api(settings)
    from flows.rollout import rollout_flow  # imported late: Prefect reads PREFECT_API_URL at import

    state = rollout_flow(model_name, version, return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except ShipyardError:
            raise
        except Exception as exc:  # reported as one line; Prefect keeps the traceback
            raise ShipyardError(f"rollout failed: {type(exc).__name__}: {exc}") from exc
        raise ShipyardError(f"rollout ended {state.name}: {state.message}")
    result = state.result()
    was = f" (was version {result.previous.version})" if result.previous else ""
    print(f"{model_name} version {version} is live at {result.endpoint}/invocations and champion{was}")
    return 0


def _row(label: str, value: str) -> None:
    print(f"{label + ':':18}{value}")
