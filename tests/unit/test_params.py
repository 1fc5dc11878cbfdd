"""Run parameters: validated before any work, rendered as the Prefect UI's Run form."""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows.pipeline import pipeline_flow
from shipyard.params import DatasetParams, RegisterParams, TrainParams


@pytest.mark.parametrize(
    ("model", "values", "field"),
    [
        (TrainParams, {"epochs": 0}, "epochs"),
        (TrainParams, {"learning_rate": -0.1}, "learning_rate"),
        (TrainParams, {"lerning_rate": 0.1}, "lerning_rate"),
        (TrainParams, {"entrypoint": "no-colon-here"}, "entrypoint"),
        (DatasetParams, {"name": "../escape"}, "name"),
        (RegisterParams, {"promotion_margin": 2}, "promotion_margin"),
    ],
)
def test_bad_values_fail_naming_the_field(model: type, values: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        model(**values)
    assert info.value.errors()[0]["loc"][0] == field


def test_the_flow_rejects_a_mistyped_nested_parameter_before_running() -> None:
    with pytest.raises(ParameterTypeError, match="epochs"):
        pipeline_flow.validate_parameters({"training": {"epochs": 0}})
    with pytest.raises(ParameterTypeError, match="batch_sise"):
        pipeline_flow.validate_parameters({"training": {"batch_sise": 3}})


def test_the_run_form_has_titles_and_descriptions_for_every_knob() -> None:
    schema = parameter_schema(pipeline_flow).model_dump()
    assert set(schema["properties"]) == {"dataset", "training", "registry", "rollout", "force"}
    train_schema = schema["definitions"]["TrainParams"]["properties"]
    assert train_schema["epochs"]["title"] == "Epochs"
    assert train_schema["epochs"]["minimum"] == 1
    assert all(p.get("description") for p in train_schema.values())
    assert "Stage" in (pipeline_flow.description or "") and "Roll out" in (pipeline_flow.description or "")
