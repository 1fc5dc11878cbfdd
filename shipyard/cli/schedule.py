"""``shipyard schedule``: show, set, pause and resume deployment schedules without the UI."""

from __future__ import annotations

import argparse
from typing import Any

from shipyard.cli.runtime import choose_prefect_api
from shipyard.errors import ConfigError
from shipyard.processes import answers
from shipyard.settings import load_settings, redact

DEFAULT_DEPLOYMENT = "pipeline-flow/local"


def register(sub: Any) -> None:
    """Add ``schedule`` and its subcommands."""
    schedule = sub.add_parser("schedule", help="show, set, pause or resume a deployment's schedule",
                              description="Schedules live on the Prefect server (SHIPYARD_PREFECT_API_URL, or the "
                              "local one 'shipyard up' starts). New schedules start paused.")
    verbs = schedule.add_subparsers(dest="schedule_command", metavar="SUBCOMMAND")
    show = verbs.add_parser("show", help="list every deployment's schedules (the default)")
    show.set_defaults(func=cmd_show)
    set_ = verbs.add_parser("set", help="change the cron of a deployment's schedule (its paused state stays)")
    set_.add_argument("cron", nargs="+", help="five cron fields in UTC, e.g. 0 3 * * * (quoted or not)")
    for verb in (set_, verbs.add_parser("pause", help="stop scheduled runs of a deployment"),
                 verbs.add_parser("resume", help="start scheduled runs of a deployment")):
        verb.add_argument("--deployment", "-d", default=DEFAULT_DEPLOYMENT,
                          help=f"flow-name/deployment-name (default {DEFAULT_DEPLOYMENT})")
    set_.set_defaults(func=cmd_set)
    verbs.choices["pause"].set_defaults(func=lambda args: _set_active(args, False))
    verbs.choices["resume"].set_defaults(func=lambda args: _set_active(args, True))
    schedule.set_defaults(func=cmd_show)


def _server() -> str:
    settings = load_settings()
    api_url = choose_prefect_api(settings)
    if api_url is None:
        raise ConfigError("no Prefect server holds schedules: run 'shipyard up' or set SHIPYARD_PREFECT_API_URL")
    if not answers(f"{api_url.rstrip('/')}/health", timeout=5):
        where = "SHIPYARD_PREFECT_API_URL" if settings.prefect_api_url else "the local server 'shipyard up' starts"
        raise ConfigError(f"the Prefect server at {redact(api_url)} ({where}) does not answer")
    return api_url


def _describe(schedule: Any) -> str:
    spec = schedule.schedule
    what = f"cron '{spec.cron}' ({spec.timezone or 'UTC'})" if hasattr(spec, "cron") else str(spec)
    return f"{what}  {'active' if schedule.active else 'paused'}"


def cmd_show(args: argparse.Namespace) -> int:
    """List the deployments on the server with their schedules."""
    api_url = _server()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        deployments = sorted(client.read_deployments(), key=lambda d: (flows.get(d.flow_id, ""), d.name))
    if not deployments:
        print(f"no deployments on {api_url} (create them with: shipyard up)")
    for deployment in deployments:
        name = f"{flows.get(deployment.flow_id, '?')}/{deployment.name}"
        schedules = [_describe(s) for s in deployment.schedules] or ["no schedule"]
        print(f"{name:36} " + "; ".join(schedules))
    return 0


def _one_schedule(client: Any, name: str, api_url: str) -> tuple[Any, Any]:
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound as exc:
        raise ConfigError(f"deployment '{name}' does not exist on {api_url} "
                          "(list them with: shipyard schedule)") from exc
    if len(deployment.schedules) != 1:
        raise ConfigError(f"deployment '{name}' has {len(deployment.schedules)} schedules; "
                          "change them in the Prefect UI")
    return deployment, deployment.schedules[0]


def cmd_set(args: argparse.Namespace) -> int:
    """Replace the cron of a deployment's one schedule."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    cron = " ".join(args.cron)
    try:
        new = CronSchedule(cron=cron, timezone="UTC")
    except ValidationError as exc:
        raise ConfigError(f"cron '{cron}' is invalid: {exc.errors()[0]['msg']}") from exc
    api_url = _server()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment, schedule = _one_schedule(client, args.deployment, api_url)
        client.update_deployment_schedule(deployment.id, schedule.id, schedule=new)
    print(f"{args.deployment}: cron '{cron}' (UTC)  {'active' if schedule.active else 'paused'}")
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    api_url = _server()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment, schedule = _one_schedule(client, args.deployment, api_url)
        client.update_deployment_schedule(deployment.id, schedule.id, active=active)
    print(f"{args.deployment}: {_describe(schedule.model_copy(update={'active': active}))}")
    return 0
