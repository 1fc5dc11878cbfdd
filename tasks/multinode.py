"""Task: train across several nodes of the train node group as an Indexed Job (``nodes > 1``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from shipyard import kube
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.training import TrainResult, load_recipe, resolve_params
from shipyard.training.multinode import Cluster, pod_env, train_on_nodes
from tasks.train import _plan, _publish


@task(cache_policy=NO_CACHE)
def train_across_nodes(dataset: DatasetRef, params: TrainParams, force: bool = False) -> TrainResult:
    """Launch one Indexed Job of ``params.nodes`` pods, wait (a lost worker starts a new attempt) and publish."""
    logger = get_run_logger()
    params = resolve_params(params)
    settings, store, plan = _plan(dataset, params, force, salt=str(flow_run.get_id() or ""))
    logger.info("%s", plan.reason)
    if plan.cached is not None:
        return plan.cached
    load_recipe(params.entrypoint, params)  # a bad entrypoint fails here, before any pod starts
    cluster = Cluster(client=kube.client(settings.kube_namespace), namespace=settings.kube_namespace,
                      image=settings.image, env=pod_env(settings))
    result = train_on_nodes(cluster, store, dataset, params, str(flow_run.get_id() or plan.key), plan.key,
                            on_line=logger.info)
    _publish(result)
    return result
