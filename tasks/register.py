"""Tasks: register the trained model (once per training) and run the champion/challenger gate."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from shipyard import registry
from shipyard.params import RegisterParams
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training import TrainResult
from tasks.retry import transient_only


class ApprovalForm(RunInput):
    """Promote this model version to champion?"""

    approve: bool = Field(default=False, title="Approve", description="Tick to promote; leave unticked to reject.")
    comment: str = Field(default="", max_length=2000, title="Comment", description="Why: recorded on the version.")


def run_context() -> registry.RunContext:
    """Return where this task runs (its flow run and UI link), for the lineage tags and the alias history."""
    return registry.RunContext(flow_run_id=flow_run.get_id(), flow_run_url=flow_run.get_flow_run_ui_url())


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def register_model(result: TrainResult, params: RegisterParams,
                   approval: registry.Approval | None = None) -> registry.Registration:
    """Register the trained model (once per training run), evaluate it against the champion and move aliases."""
    logger = get_run_logger()
    settings = load_settings()
    store = filesystem(settings)
    registry.check(settings)
    client = registry.client(settings)
    context = run_context()
    registered = registry.register(client, settings, store, result, params.model_name, params.metric, context)
    if registered.reused:
        logger.info("cache hit: training %s is already %s version %s; not registering again",
                    result.key, params.model_name, registered.version)
    else:
        logger.info("registered %s version %s from MLflow run %s", params.model_name, registered.version,
                    registered.run_id)
    registration = registry.judge(client, settings, store, registered, result, params, context, approval)
    logger.info("gate: %s version %s %s: %s", params.model_name, registered.version,
                registration.decision.outcome, registration.decision.reason)
    _report(registration)
    return registration


def _report(registration: registry.Registration) -> None:
    """Publish the decision and the champion-vs-challenger table in the Prefect UI."""
    key = "gate-" + re.sub(r"[^a-z0-9-]", "-", registration.model_name)  # artifact keys allow only [a-z0-9-]
    create_markdown_artifact(registry.report_markdown(registration), key=key,
                             description=f"gate decision for version {registration.version}")
    rows = registration.decision.table(registration.version)
    if rows:
        create_table_artifact(rows, key=f"{key}-table", description="champion vs challenger on the holdout")


def await_approval(registration: registry.Registration, params: RegisterParams) -> registry.Approval:
    """Pause the flow run until someone approves or rejects the promotion (no answer in time: rejected).

    Called from the flow itself: only a flow run can pause.
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    logger = get_run_logger()
    logger.info("waiting up to %ss for approval to promote %s version %s (resume the run in the Prefect UI)",
                params.approval_timeout_seconds, registration.model_name, registration.version)
    try:
        answer = pause_flow_run(wait_for_input=ApprovalForm, timeout=params.approval_timeout_seconds,
                                key=f"approve-{registration.model_name}-{registration.version}")
    except FlowPauseTimeout:
        return registry.Approval(approved=False, comment=f"no answer within {params.approval_timeout_seconds}s")
    return registry.Approval(approved=answer.approve, comment=answer.comment)
