"""Rollout: take a registered model version to a live endpoint without downtime, or not at all.

Two targets share one interface (:mod:`shipyard.rollout.base`): ``local`` (a hot-swapping server on
this machine) and ``kubernetes`` (a Deployment on the inference node group), chosen by
``SHIPYARD_ROLLOUT_TARGET``. :mod:`shipyard.rollout.champion` keeps the ``champion`` alias and the live
version together.
"""

from __future__ import annotations

from shipyard.rollout.base import Live, ModelRef, RolloutResult, RolloutTarget
from shipyard.settings import RolloutTarget as TargetName
from shipyard.settings import Settings


def target(settings: Settings) -> RolloutTarget:
    """Return the rollout target the settings choose."""
    if settings.rollout_target == TargetName.kubernetes:
        from shipyard.rollout.kubernetes import KubernetesTarget  # type: ignore[import-not-found,unused-ignore]

        kube: RolloutTarget = KubernetesTarget(settings)
        return kube
    from shipyard.rollout.local import LocalTarget

    return LocalTarget(settings)


__all__ = ["Live", "ModelRef", "RolloutResult", "RolloutTarget", "target"]
