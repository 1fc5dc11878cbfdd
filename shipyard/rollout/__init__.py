"""Rollout: serve a registered model version on a target (local process or Kubernetes)."""
