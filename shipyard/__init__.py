"""Shipyard: take a model from raw data to a live endpoint (stage -> train -> register -> roll out).

This package is the Prefect-free core. Importing it (or any submodule) has no side effects.
"""

__version__ = "0.1.0"
