"""Render the deployment table as a ``prefect.yaml``, for teams that deploy with ``prefect deploy``.

    python -m deployments.prefect_yaml          # rewrite prefect.yaml at the repository root
    python -m deployments.prefect_yaml --check  # exit 1 if prefect.yaml differs from the table

Values come from the default settings; ``shipyard deploy`` applies the same rows with the current ones.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from deployments import DEPLOYMENTS, DeploymentSpec
from deployments.apply import IMAGE_WORKDIR, REPO_ROOT, cluster_env, cluster_job_variables, triggers
from shipyard.settings import Settings

PATH = REPO_ROOT / "prefect.yaml"
HEADER = "# Generated from deployments/__init__.py by `python -m deployments.prefect_yaml`; do not edit.\n"


def _deployment(spec: DeploymentSpec, settings: Settings) -> dict[str, Any]:
    job_variables = dict(spec.job_variables)
    entry: dict[str, Any] = {"name": spec.name, "entrypoint": spec.entrypoint, "description": spec.description,
                             "tags": list(spec.tags)}
    if spec.environment == "cluster":
        job_variables = cluster_job_variables(spec, settings, cluster_env(settings))
        # The worker loads the entrypoint relative to the image's WORKDIR.
        entry["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(IMAGE_WORKDIR)}}]
    entry["work_pool"] = {"name": spec.work_pool(settings), "job_variables": job_variables}
    cron = spec.schedule_cron(settings)
    entry["schedules"] = [] if cron is None else [{"cron": cron, "timezone": "UTC", "active": False}]
    entry["triggers"] = [{"type": "event", **t.model_dump(mode="json", exclude_unset=True)} for t in triggers(spec)]
    return entry


def render(settings: Settings | None = None) -> str:
    """Return the prefect.yaml text for the table."""
    settings = settings or Settings.model_construct()  # the defaults, whatever the environment holds
    from prefect import __version__ as prefect_version

    document = {"name": "shipyard", "prefect-version": prefect_version, "build": None, "push": None,
                "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}],
                "deployments": [_deployment(spec, settings) for spec in DEPLOYMENTS]}
    return HEADER + str(yaml.safe_dump(document, sort_keys=False, width=120))


def main(argv: list[str] | None = None) -> int:
    """Write prefect.yaml, or check that it is current."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if prefect.yaml is not what the table renders")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PATH.read_text() if PATH.exists() else ""
        if current != text:
            print(f"{PATH} is out of date: run python -m deployments.prefect_yaml", file=sys.stderr)
            return 1
        return 0
    tmp = PATH.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(PATH)  # atomic: never a half-written prefect.yaml
    print(f"wrote {PATH} ({len(DEPLOYMENTS)} deployments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
