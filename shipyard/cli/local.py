"""``shipyard up``, ``down`` and ``status``: the local services behind the Prefect UI's Run button."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shipyard import processes
from shipyard.cli.runtime import choose_prefect_api, ready_prefect_api, start_local_prefect
from shipyard.errors import ConfigError, ShipyardError
from shipyard.settings import Settings, load_settings, redact, settings_table

SERVICES = ("worker", "mlflow-ui", "prefect-server")  # stop order: dependants first
# Prefect 3.9's process worker ignores a SIGTERM while it is idle; a second one is its documented "stop now".
# The flow runs it started, in its process group, got the first one and keep their grace.
SECOND_SIGTERM_AFTER = {"worker": 2.0}


def register(sub: Any) -> None:
    """Add ``up``, ``down`` and ``status``."""
    up = sub.add_parser("up", help="start the local Prefect server + UI, MLflow UI, a worker and the deployments",
                        description="Start the local Prefect server and UI, the MLflow UI, a process work pool "
                        "with a worker, and the local deployments, so the Prefect UI's Run button works.")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop everything 'up' and the pipeline started (inference server too)")
    down.set_defaults(func=cmd_down)
    deploy = sub.add_parser("deploy", help="create the work pools and deployments of an environment",
                            description="Create the work pools and deployments of an environment on the Prefect "
                            "server named by SHIPYARD_PREFECT_API_URL (cluster: Kubernetes pools with Shipyard's "
                            "base job templates, deployments running SHIPYARD_IMAGE).")
    deploy.add_argument("environment", choices=["local", "cluster"])
    deploy.set_defaults(func=cmd_deploy)
    status = sub.add_parser("status", help="show the store, MLflow, running services and each model's champion")
    status.add_argument("--settings", action="store_true", help="list every SHIPYARD_* setting and exit")
    status.set_defaults(func=cmd_status)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _start_prefect(settings: Settings) -> str:
    started = start_local_prefect(settings)
    if started is not None:
        print("Starting the Prefect server (10-40 s) ...", flush=True)
    api_url = ready_prefect_api(settings)
    if started is None:
        print(f"Prefect server already running at {api_url.removesuffix('/api')}")
    return api_url


def _start_mlflow_ui(settings: Settings) -> None:
    if not settings.is_local_mlflow() or processes.find(settings.home, "mlflow-ui"):
        return
    print("Starting the MLflow UI ...", flush=True)
    url = f"http://127.0.0.1:{settings.mlflow_ui_port}"
    cmd = [_bin("mlflow"), "server", "--backend-store-uri", settings.resolved_mlflow_uri(), "--host", "127.0.0.1",
           "--port", str(settings.mlflow_ui_port), "--workers", "1",
           "--default-artifact-root", str((settings.home / "store" / "mlflow-artifacts").resolve())]
    processes.spawn(settings.home, "mlflow-ui", cmd, health_url=f"{url}/health", url=url, timeout=180,
                    env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def _start_worker(settings: Settings, api_url: str) -> None:
    if processes.find(settings.home, "worker"):
        return
    cmd = [_bin("prefect"), "worker", "start", "--pool", settings.local_work_pool, "--type", "process"]
    env = {"PREFECT_API_URL": api_url, "SHIPYARD_HOME": str(settings.home.resolve()),
           "PREFECT_WORKER_QUERY_SECONDS": str(settings.local_worker_poll_seconds)}
    processes.spawn(settings.home, "worker", cmd, health_url=None, env=env)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the local services and create the deployments."""
    settings = load_settings()
    api_url = _start_prefect(settings)  # sets PREFECT_API_URL, read by Prefect's client imported below
    from deployments.apply import deploy_local

    names = deploy_local(settings)
    _start_worker(settings, api_url)
    _start_mlflow_ui(settings)
    print(f"Prefect UI:  {api_url.removesuffix('/api')}  (deployments: {', '.join(names)}; worker on pool "
          f"'{settings.local_work_pool}')")
    if settings.is_local_mlflow():
        print(f"MLflow UI:   http://127.0.0.1:{settings.mlflow_ui_port}")
    print("Run the pipeline from the UI (Deployments > pipeline-flow/local > Run), or: shipyard run")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Create one environment's pools and deployments on the configured Prefect server."""
    settings = load_settings()
    if choose_prefect_api(settings) is None:
        raise ConfigError("no Prefect server to deploy to: set SHIPYARD_PREFECT_API_URL or run 'shipyard up'")
    from deployments.apply import deploy_cluster, deploy_local

    names = deploy_cluster(settings) if args.environment == "cluster" else deploy_local(settings)
    print("Deployed: " + ", ".join(names))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop every service Shipyard started on this machine."""
    settings = load_settings()
    from shipyard.rollout.local import stop

    stopped = [s.name for s in (stop(settings),) if s]
    stopped += [name for name in SERVICES if processes.stop(settings.home, name, SECOND_SIGTERM_AFTER.get(name))]
    print("Stopped: " + ", ".join(stopped) if stopped else "Nothing was running.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show where things are and what runs."""
    settings = load_settings()
    if args.settings:
        for name, default, description in settings_table():
            print(f"{name:32} {default or '-':22} {description}")
        return 0
    _row("store", settings.resolved_store_uri())
    _row("mlflow", redact(settings.resolved_mlflow_uri()))
    _row("train mode", settings.train_mode.value)
    for name in ("prefect-server", "mlflow-ui", "worker", "inference"):
        service = processes.find(settings.home, name)
        if service is None:
            _row(name, "stopped")
            continue
        where = f" at {service.url}" if service.url else ""
        model = f", {service.info['model_name']} version {service.info['model_version']}" if service.info else ""
        _row(name, f"running (pid {service.pid}){where}{model}")
    try:
        _print_registry(settings)
    except ShipyardError as exc:
        _row("registry", f"unavailable ({exc})")
    return 0


def _row(label: str, value: str) -> None:
    print(f"{label + ':':16}{value}")


def _print_registry(settings: Settings) -> None:
    if settings.is_local_mlflow() and not (settings.home / "mlflow.db").exists():
        _row("registry", "empty (run 'shipyard demo')")
        return
    from shipyard import registry

    client = registry.client(settings)
    with registry.translate(settings.resolved_mlflow_uri()):
        for model in client.search_registered_models(max_results=20):
            champion = model.aliases.get(registry.CHAMPION) if model.aliases else None
            _row("model", f"{model.name} (champion: version {champion or 'none'})")
