"""``shipyard demo`` and ``shipyard run``: the pipeline from the terminal."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shipyard.cli.runtime import ready_prefect_api, start_local_prefect, ui_url, use_prefect_api
from shipyard.datasets.validate import read_schemas
from shipyard.errors import ConfigError, ShipyardError
from shipyard.params import DatasetParams, RegisterParams, RolloutParams, TrainParams
from shipyard.pipeline import PipelineResult, up_to_date
from shipyard.rollout.local import LocalTarget
from shipyard.settings import Settings, load_settings, redact
from shipyard.training.recipe import check_data, validate_recipe_params

SECTIONS: dict[str, type[Any]] = {
    "dataset": DatasetParams, "training": TrainParams, "registry": RegisterParams, "rollout": RolloutParams,
}
# CLI option -> (section, field); typed options only, never JSON on the command line.
OPTIONS: dict[str, tuple[str, str, type[Any]]] = {
    "dataset": ("dataset", "name", str), "source": ("dataset", "source", str),
    "entrypoint": ("training", "entrypoint", str), "epochs": ("training", "epochs", int),
    "batch_size": ("training", "batch_size", int), "learning_rate": ("training", "learning_rate", float),
    "hidden_units": ("training", "hidden_units", int), "seed": ("training", "seed", int),
    "model_name": ("registry", "model_name", str), "promotion_margin": ("registry", "promotion_margin", float),
    "metric": ("registry", "metric", str), "dataset_version": ("dataset", "version", str),
}


def register(sub: Any) -> None:
    """Add ``demo`` and ``run``."""
    demo = sub.add_parser("demo", help="run the demo pipeline on the bundled digits and print the endpoint",
                          description="Stage the bundled digits, train, register and serve them locally.")
    demo.set_defaults(func=cmd_demo)
    run = sub.add_parser("run", help="run the pipeline with options",
                         description="Run the pipeline. Options override --params; unset ones keep their defaults.")
    run.add_argument("--params", type=Path, metavar="FILE",
                     help="YAML or JSON file with sections dataset, training, registry, rollout")
    for option, (section, field, kind) in OPTIONS.items():
        description = SECTIONS[section].model_fields[field].description
        run.add_argument(f"--{option.replace('_', '-')}", dest=option, type=kind, default=None, help=description)
    run.add_argument("--set", dest="recipe_set", action="append", default=[], metavar="NAME=VALUE",
                     help="set one of the recipe's own parameters (repeatable; the value is read as YAML: 3, 0.5, "
                     "true, text); see docs/training.md")
    run.add_argument("--force", action="store_true",
                     help="train again even if a finished training matches (without it, a rerun whose every step "
                     "is done answers 'Nothing to do' without starting a flow)")
    run.add_argument("--no-smoke-test", action="store_true", help="skip the smoke-test prediction")
    run.set_defaults(func=cmd_run)


def _read_params_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"params file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"params file {path} is a directory, not a YAML or JSON file") from exc
    except OSError as exc:
        raise ConfigError(f"params file {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"params file {path} is not text (YAML or JSON in UTF-8): byte {exc.start} "
                          "cannot be decoded") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(map(str, data)) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"params file {path}: unknown section '{unknown[0]}' (expected {', '.join(SECTIONS)})")
    for section, body in data.items():
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"params file {path}: section '{section}' must be a mapping of field: value, "
                              f"not {type(body).__name__}")
    return data


def build_params(args: argparse.Namespace) -> dict[str, Any]:
    """Validate every section before any work starts; errors name the field."""
    raw: dict[str, dict[str, Any]] = {k: dict(v or {}) for k, v in
                                      (_read_params_file(args.params) if getattr(args, "params", None) else {}).items()}
    for option, (section, field, _) in OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            raw.setdefault(section, {})[field] = value
    if getattr(args, "no_smoke_test", False):
        raw.setdefault("rollout", {})["smoke_test"] = False
    for item in getattr(args, "recipe_set", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item}: expected NAME=VALUE")
        recipe = raw.setdefault("training", {}).setdefault("recipe_params", {})
        recipe[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    params: dict[str, Any] = {}
    for section, model in SECTIONS.items():
        try:
            params[section] = model.model_validate(raw.get(section, {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in (section, *err["loc"]))
            raise ConfigError(f"parameter {where}: {err['msg']}") from exc
    training = params["training"]  # the recipe's own parameters are checked here, before any work
    params["training"] = training.model_copy(
        update={"recipe_params": validate_recipe_params(training.entrypoint, training.recipe_params)})
    params["force"] = bool(getattr(args, "force", False))
    return params


def _preflight(settings: Settings, params: dict[str, Any]) -> None:
    from shipyard import registry
    from shipyard.storage import probe

    source = params["dataset"].source
    if source != "demo" and "://" not in source and not any(c in source for c in "*?[") and not Path(source).exists():
        raise ConfigError(f"dataset source {source} does not exist")
    if source != "demo" and "://" not in source and params["dataset"].version is None:
        # Staging would refuse it, or the recipe could not train on it: say so before anything is written.
        check_data(params["training"], read_schemas(source))
    probe(settings)
    if params["dataset"].version is not None:
        from shipyard.datasets import resolve_version
        from shipyard.storage import filesystem

        resolve_version(filesystem(settings), params["dataset"].name, params["dataset"].version)
    registry.check(settings)


def _execute(params: dict[str, Any]) -> int:
    settings = load_settings()
    _preflight(settings, params)  # bad input fails before anything is started or written
    done = up_to_date(settings, **params)  # a rerun with nothing to do answers without starting a flow
    if done is not None:
        print("Nothing to do: this data is staged, trained, registered as champion and served; no pipeline run "
              "was started (--force trains again)", flush=True)
        _print_summary(done, settings, None)
        return 0
    started = start_local_prefect(settings)
    if started is not None:
        print(f"Starting the local Prefect server at {ui_url(started.url, '')}; it keeps running, so the next run "
              "starts at once ('shipyard down' stops it)", flush=True)
    use_prefect_api(settings)  # Prefect reads PREFECT_API_URL at import: the import below overlaps the start
    from flows.pipeline import pipeline_flow

    early = _prepare_while_waiting(settings) if started is not None else None
    api_url = ready_prefect_api(settings)

    print(f"Running stage -> train -> register -> roll out (Prefect: {api_url})", flush=True)
    state = pipeline_flow(**params, return_state=True)
    result: PipelineResult | None = state.result() if state.is_completed() else None
    if early is not None and (result is None or not result.rolled_out):
        early.stop_if_idle()  # the server started ahead of a rollout that did not come
    if result is None:
        raise _failure(state)
    _print_summary(result, settings, api_url)
    return 0


# Loaded while a Prefect server this run started boots (seconds spent waiting anyway), so these imports cost a
# first run nothing: the training stack (torch), MLflow, matplotlib (the curves). A run against a server that
# already answers loads each only when a step needs it: a cached rerun never loads torch or matplotlib.
FIRST_RUN_MODULES = ("shipyard.training.loop", "mlflow", "matplotlib.figure")


def _prepare_while_waiting(settings: Settings) -> LocalTarget | None:
    """While Prefect boots: load the first run's modules, open MLflow (on a fresh home: create its database) and
    start the local inference server (the rollout step waits for it). Return the target if its server was started.
    """
    from shipyard import registry, rollout

    for name in FIRST_RUN_MODULES:
        importlib.import_module(name)
    with registry.translate(settings.resolved_mlflow_uri()):
        registry.client(settings)  # MLflow keeps the store per URI: the tasks' clients reuse this one
    target = rollout.target(settings)
    if isinstance(target, LocalTarget) and target.start() is not None:
        return target
    return None


def _failure(state: Any) -> Exception:
    try:
        state.result()
    except ShipyardError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - reported as one line; Prefect keeps the traceback
        return ShipyardError(f"pipeline run failed: {type(exc).__name__}: {exc}")
    return ShipyardError(f"pipeline run ended {state.name}: {state.message}")


def _print_summary(result: Any, settings: Settings, api_url: str | None) -> None:
    mlflow_ui = (f"http://127.0.0.1:{settings.mlflow_ui_port}" if settings.is_local_mlflow()
                 else redact(settings.resolved_mlflow_uri()))
    is_champion = result.champion_version == result.model_version
    champion = " (champion)" if is_champion else f" ({result.gate_outcome}; champion stays version " \
                                                 f"{result.champion_version})"
    run_link = f"{mlflow_ui}/#/experiments/{result.mlflow_experiment_id}/runs/{result.mlflow_run_id}"
    flow_link = f"  ({ui_url(api_url, 'runs/flow-run/' + str(result.flow_run_id))})" if api_url else ""
    lines = [
        "",
        f"Dataset:     {result.dataset}",
        "Metrics:     " + " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()),
        f"Model:       {result.model_name} version {result.model_version}{champion}",
        f"Gate:        {result.gate_outcome}: {result.gate_reason}",
    ]
    if result.rolled_out:
        lines += [f"Endpoint:    {result.endpoint}/invocations  (serving version {result.served_version})",
                  f"Try it:      {result.curl()}"]
    else:
        lines.append("Endpoint:    not rolled out (the version is not champion)")
    lines.append(f"MLflow run:  {result.mlflow_run_id}  ({run_link})")
    if result.flow_run_id is not None:
        lines.append(f"Prefect run: {result.flow_run_id}{flow_link}")
    if settings.is_local_mlflow() and result.flow_run_id is not None:
        lines.append("UIs:         the Prefect server keeps running for the next run; 'shipyard up' adds the MLflow UI "
                     "and a worker; 'shipyard down' stops everything")
    print("\n".join(lines), flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the pipeline with the demo defaults."""
    return _execute(build_params(argparse.Namespace()))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline with the given options."""
    return _execute(build_params(args))

