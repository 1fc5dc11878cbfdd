"""prefect.yaml, for teams that deploy with `prefect deploy`, says what the deployment table says."""

from __future__ import annotations

import subprocess
import sys

import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.cli.deploy._triggers import _initialize_deployment_triggers

from deployments import DEPLOYMENTS
from deployments.prefect_yaml import PATH, render
from shipyard.settings import Settings


def _loaded() -> PrefectYamlModel:
    return PrefectYamlModel.model_validate(yaml.safe_load(PATH.read_text()))


def test_prefect_yaml_is_what_the_table_renders() -> None:
    # After changing deployments/__init__.py (or merging a branch that did): python -m deployments.prefect_yaml
    check = subprocess.run([sys.executable, "-m", "deployments.prefect_yaml", "--check"], capture_output=True,
                           text=True, timeout=120, cwd=PATH.parent)
    assert check.returncode == 0, check.stderr
    assert PATH.read_text() == render()


def test_every_row_is_a_deployment_prefect_deploy_accepts() -> None:
    config = _loaded()
    by_name = {(d.entrypoint, d.name): d for d in config.deployments}
    assert len(by_name) == len(config.deployments) == len(DEPLOYMENTS)
    defaults = Settings.model_construct()
    for spec in DEPLOYMENTS:
        entry = by_name[(spec.entrypoint, spec.name)]
        assert entry.work_pool is not None and entry.work_pool.name == spec.work_pool(defaults)
        assert entry.description == spec.description
        crons = [s.model_dump().get("cron") for s in entry.schedules or []]
        assert crons == ([] if spec.schedule_cron(defaults) is None else [spec.schedule_cron(defaults)])
        # Every schedule starts paused, as `shipyard deploy` creates it.
        assert all(s.model_dump().get("active") is False for s in entry.schedules or [])
        triggers = _initialize_deployment_triggers(spec.full_name, [dict(t) for t in entry.triggers or []])
        trigger = spec.trigger_spec()
        if trigger is None:
            assert triggers == []
        else:
            (parsed,) = triggers
            assert parsed.expect == {trigger.event}
            assert parsed.parameters == trigger.parameters


def test_the_new_data_deployments_run_the_pipeline_on_the_staged_version() -> None:
    triggered = [d for d in DEPLOYMENTS if d.trigger == "new-data"]
    assert {d.environment for d in triggered} == {"local", "cluster"}
    for spec in triggered:
        trigger = spec.trigger_spec()
        assert trigger is not None and spec.flow_name == "pipeline-flow"
        assert trigger.parameters["dataset"]["version"] == "{{ event.payload.version }}"
