"""The integration tests' real servers (S3-compatible, MLflow, Prefect), for the reliability drills too."""

from tests.integration.conftest import (
    mlflow_server,
    mlflow_uri,
    model_name,
    prefect_api,
    s3,
    s3_backend,
    s3_endpoint,
    seaweedfs_endpoint,
)

__all__ = ["mlflow_server", "mlflow_uri", "model_name", "prefect_api", "s3", "s3_backend", "s3_endpoint",
           "seaweedfs_endpoint"]
