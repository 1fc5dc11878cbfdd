"""The promotion verdict: thresholds first, then the margin over the champion on the same holdout."""

from __future__ import annotations

import pytest

from shipyard.params import RegisterParams
from shipyard.registry.gate import verdict

PARAMS = RegisterParams(metric="val_accuracy", promotion_margin=0.01)


def test_the_first_model_above_the_thresholds_becomes_champion() -> None:
    params = PARAMS.model_copy(update={"min_metrics": {"val_accuracy": 0.9, "f1": 0.8}})
    assert verdict({"val_accuracy": 0.9, "f1": 0.8}, None, None, params) == (
        "promoted", "first champion: val_accuracy 0.9000 on the holdout")  # exactly at a threshold passes
    assert verdict({"val_accuracy": 0.95}, {"val_accuracy": 0.99}, None, PARAMS)[0] == "promoted"
    assert verdict({"val_accuracy": 0.95}, None, "3", PARAMS)[0] == "promoted"


def test_a_model_below_any_threshold_is_never_promoted_and_each_shortfall_is_named() -> None:
    params = PARAMS.model_copy(update={"min_metrics": {"val_accuracy": 0.9, "f1": 0.8, "recall": 0.5}})
    assert verdict({"val_accuracy": 0.95, "f1": 0.7999}, None, None, params) == (
        "challenger", "below the thresholds: f1 0.7999 < minimum 0.8; recall nan < minimum 0.5")


def test_a_missing_metric_is_named_with_the_metrics_the_recipe_returned() -> None:
    assert verdict({"loss": 0.2, "f1": 0.9}, {"val_accuracy": 0.5}, "1", PARAMS) == (
        "challenger", "the recipe's evaluate returned no 'val_accuracy' (it has f1, loss)")


@pytest.mark.parametrize(("mine", "outcome"), [(0.91, "promoted"), (0.9099, "challenger"), (0.95, "promoted")])
def test_beating_the_champion_needs_at_least_the_margin(mine: float, outcome: str) -> None:
    got, reason = verdict({"val_accuracy": mine}, {"val_accuracy": 0.9}, "4", PARAMS)
    assert got == outcome
    verb = "beats" if outcome == "promoted" else "does not beat"
    by = "by at least the margin" if outcome == "promoted" else "by the margin"
    assert reason == f"val_accuracy {mine:.4f} {verb} champion v4's 0.9000 {by} 0.01 on the same holdout"


def test_a_champion_without_the_metric_is_beaten_with_a_reason_not_a_crash() -> None:
    assert verdict({"val_accuracy": 0.5}, {"loss": 0.1}, "2", PARAMS) == (
        "promoted", "val_accuracy 0.5000; champion v2 reports no 'val_accuracy' on the same holdout")
