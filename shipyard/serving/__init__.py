"""Serving: what runs inside the inference pod (the HTTP app, model loading, batching, metrics).

It imports neither Prefect nor the rollout or CLI code (an import contract checks that), so the
inference image installs only the ``serving`` extra. Rollout lives in :mod:`shipyard.rollout`.
"""
