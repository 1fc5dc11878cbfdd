"""``python -m shipyard.cli``."""

from shipyard.cli import run

run()
