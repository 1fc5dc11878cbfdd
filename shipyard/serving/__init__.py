"""Serving: an HTTP inference server in MLflow's scoring format, and local rollout of it.

The app (``shipyard.serving.app``) imports MLflow and FastAPI only, never Prefect, so the inference
image stays small.
"""
