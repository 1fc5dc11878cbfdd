"""Kubernetes: clients built from kubeconfig, and watching training Jobs that cannot be scheduled."""

from shipyard.kube.client import client
from shipyard.kube.scheduling import TIMEOUT_ANNOTATION, SchedulingWatch, parse_duration

__all__ = ["TIMEOUT_ANNOTATION", "SchedulingWatch", "client", "parse_duration"]
