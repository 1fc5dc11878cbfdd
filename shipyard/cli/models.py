"""``shipyard models ls|show|history|promote|rollback``: the registry from the terminal."""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING, Any

from shipyard import registry
from shipyard.errors import RegistryError
from shipyard.settings import Settings, load_settings, redact
from shipyard.storage import Store, filesystem

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIASES = (registry.CHAMPION, registry.PREVIOUS, registry.CHALLENGER)


def register(sub: Any) -> None:
    """Add ``models`` and its subcommands."""
    models = sub.add_parser("models", help="list, inspect, promote and roll back registered models",
                            description="Registered models in MLflow (SHIPYARD_MLFLOW_TRACKING_URI) and their "
                            "aliases; alias history from the store (SHIPYARD_STORE_URI).")
    verbs = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    ls = verbs.add_parser("ls", help="list registered models and their aliases", description="List models.")
    ls.set_defaults(func=cmd_ls)
    show = verbs.add_parser("show", help="show a version's lineage and gate decision", description="Show a version.")
    show.add_argument("name")
    show.add_argument("version", nargs="?", default=None, help="version number (default: the champion)")
    show.set_defaults(func=cmd_show)
    history = verbs.add_parser("history", help="every alias move with time, reason and flow run",
                               description="Print the alias history of a model, oldest first.")
    history.add_argument("name")
    history.set_defaults(func=cmd_history)
    promote = verbs.add_parser("promote", help="make a version champion (same checks as the gate, no margin)",
                               description="Check the version loads and passes the model's thresholds on its "
                               "holdout, then move 'champion' to it ('previous' to the old champion).")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--reason", default=None, help="why (recorded in the history)")
    promote.set_defaults(func=cmd_promote)
    rollback = verbs.add_parser("rollback", help="make the 'previous' version champion again",
                                description="Promote the version holding 'previous', with the same checks.")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default=None, help="why (recorded in the history)")
    rollback.set_defaults(func=cmd_rollback)


def _open() -> tuple[Settings, Store, MlflowClient]:
    settings = load_settings()
    registry.check(settings)
    return settings, filesystem(settings), registry.client(settings)


def cmd_ls(args: argparse.Namespace) -> int:
    """List registered models with their alias versions."""
    settings, _, client = _open()
    with registry.translate(settings.resolved_mlflow_uri()):
        models = client.search_registered_models()
    print(f"{'model':<32} " + " ".join(f"{a:<10}" for a in ALIASES) + " latest")
    for model in models:
        aliases = {str(k): str(v) for k, v in model.aliases.items()}
        latest = max((int(v.version) for v in model.latest_versions or []), default=0)
        print(f"{model.name:<32} " + " ".join(f"{aliases.get(a, '-'):<10}" for a in ALIASES) + f" {latest or '-'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print a version's aliases, description and tags (lineage and gate)."""
    settings, _, client = _open()
    _registered(settings, client, args.name)
    aliases = registry.aliases(client, args.name)
    version = args.version or aliases.get(registry.CHAMPION)
    if version is None:
        raise RegistryError(f"model {args.name} has no {registry.CHAMPION}; name a version "
                            "(list models with: shipyard models ls)")
    with registry.translate(settings.resolved_mlflow_uri()):
        found = client.get_model_version(args.name, version)
    held = [a for a, v in aliases.items() if v == str(version)]
    print(f"{args.name} version {found.version}" + (f"  ({', '.join(held)})" if held else ""))
    print(f"  {found.description or ''}")
    for key in sorted(found.tags):
        print(f"  {key:<36} {found.tags[key]}")
    return 0


def _registered(settings: Settings, client: MlflowClient, name: str) -> None:
    """Fail with one line if no model of that name is registered."""
    from shipyard.registry.tracking import registered_model

    if registered_model(client, name) is None:
        raise RegistryError(f"no model named '{name}' is registered in MLflow at "
                            f"{redact(settings.resolved_mlflow_uri())} (list models with: shipyard models ls)")


def cmd_history(args: argparse.Namespace) -> int:
    """Print every alias move of a model."""
    _, store, _ = _open()
    moves = registry.history(store, args.name)
    if not moves:
        print(f"no alias moves recorded for {args.name}")
    for m in moves:
        run = f" run {m.flow_run_id}" if m.flow_run_id else ""
        print(f"{m.at:%Y-%m-%d %H:%M:%S}Z  {m.alias:<10} {m.replaced or '-':>4} -> {m.version or '-':<4} "
              f"by {m.actor}{run}: {m.reason}")
    return 0


def _promote(name: str, version: str, reason: str) -> int:
    settings, store, client = _open()
    decision = registry.promote(client, settings, store, name, version, reason, registry.RunContext(),
                                actor=f"cli:{getpass.getuser()}")
    print(f"{name} version {version} is now {registry.CHAMPION}"
          + (f" (previous: version {decision.champion_before})" if decision.champion_before else ""))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote a version by hand."""
    return _promote(args.name, args.version, args.reason or f"promoted by hand to version {args.version}")


def cmd_rollback(args: argparse.Namespace) -> int:
    """Promote the previous champion again."""
    _, _, client = _open()
    previous = registry.aliases(client, args.name).get(registry.PREVIOUS)
    if previous is None:
        raise RegistryError(f"model {args.name} has no '{registry.PREVIOUS}' version to roll back to")
    return _promote(args.name, previous, args.reason or f"rolled back to previous version {previous}")
