"""One dataset identity: the train flow's Run form validates a DatasetRef, and the manifest has one location."""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from flows.train import train_flow
from shipyard.refs import DatasetRef
from shipyard.settings import Settings
from shipyard.storage import filesystem


def test_the_train_form_shows_and_validates_the_dataset_ref() -> None:
    schema = parameter_schema(train_flow).model_dump()
    ref = schema["definitions"]["DatasetRef"]["properties"]
    assert ref["version"]["title"] == "Dataset version" and ref["version"]["pattern"]
    assert set(schema["properties"]) == {"dataset", "training", "force"}
    with pytest.raises(ParameterTypeError, match="version"):
        train_flow.validate_parameters({"dataset": {"name": "digits", "version": "latest"}})


def test_the_manifest_location_is_computed_in_one_place() -> None:
    store = filesystem(Settings(store_uri="s3://bucket/store"))
    ref = DatasetRef.parse("digits@0123456789abcdef")
    assert str(ref) == "digits@0123456789abcdef"
    assert ref.manifest_url(store) == "s3://bucket/store/datasets/digits/versions/0123456789abcdef.json"
