"""The deployment table names real flows, as <flow-name>/<environment>, on the configured pools."""

from __future__ import annotations

import importlib
from pathlib import Path

from deployments import DEPLOYMENTS, for_environment
from shipyard.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_every_row_names_an_existing_flow_by_its_prefect_name() -> None:
    for spec in DEPLOYMENTS:
        path, func = spec.entrypoint.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert flow.name == spec.flow_name
        assert spec.full_name == f"{flow.name}/{spec.name}" and spec.name.startswith(spec.environment)
        assert flow.description, f"{spec.entrypoint} needs a docstring: it is the UI description"


def test_names_are_unique_and_pools_come_from_settings() -> None:
    names = [d.full_name for d in DEPLOYMENTS]
    assert len(names) == len(set(names))
    settings = Settings(train_work_pool="gpu-a100")
    pools = {d.full_name: d.work_pool(settings) for d in DEPLOYMENTS}
    assert pools["train-flow/cluster"] == "gpu-a100"
    assert {d.full_name for d in for_environment("local")} == {"pipeline-flow/local", "pipeline-flow/local-new-data",
                                                               "train-flow/local", "rollout-flow/local"}
