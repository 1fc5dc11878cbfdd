"""Shipyard's error tree.

    ShipyardError                  anything Shipyard expects and can explain in one line
    ├── ConfigError                a setting or parameter is wrong (names the field or variable)
    ├── StoreError                 the artifact store (local dir or S3) failed or is unreachable
    ├── DatasetError               a source or dataset version is missing, unreadable or invalid
    ├── TrainingError              training cannot start or failed (bad params, entrypoint, checkpoint)
    ├── RegistryError              MLflow is unreachable or refused an operation
    ├── ServingError               the inference server did not start or answered wrongly
    └── KubeError                  the Kubernetes API refused an object or a workload failed

Boundary code translates library errors (botocore, s3fs, MLflow, lightkube) into these with
``raise ... from exc`` so that the CLI prints one line and exits non-zero.
"""

from __future__ import annotations


class ShipyardError(Exception):
    """An error Shipyard expected: the message names the culprit and the next step."""


class ConfigError(ShipyardError):
    """A setting or run parameter is invalid."""


class StoreError(ShipyardError):
    """The artifact store failed or cannot be reached."""


class DatasetError(ShipyardError):
    """A dataset source or version is missing, unreadable or invalid."""


class TrainingError(ShipyardError):
    """Training could not start or did not finish."""


class RegistryError(ShipyardError):
    """The MLflow tracking server or model registry failed."""


class ServingError(ShipyardError):
    """The inference server did not start or answered wrongly."""


class KubeError(ShipyardError):
    """The Kubernetes API refused an object or a workload failed."""
