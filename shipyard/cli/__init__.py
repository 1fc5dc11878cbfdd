"""The ``shipyard`` command line.

Each submodule in ``COMMANDS`` adds its subcommands through ``register(subparsers)`` and sets ``func``
on its parsers. Expected errors print one line (no traceback) and exit non-zero.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from shipyard import __version__
from shipyard.errors import ShipyardError

COMMANDS = ["shipyard.cli.pipeline", "shipyard.cli.local", "shipyard.cli.data", "shipyard.cli.models",
            "shipyard.cli.rollout", "shipyard.cli.schedule", "shipyard.cli.cluster"]

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the argument and where the usage is, then exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every subcommand registered."""
    parser = Parser(
        prog="shipyard",
        description="Take a model from raw data to a live endpoint: stage -> train -> register -> roll out.",
        epilog="Settings come from SHIPYARD_* environment variables: see 'shipyard status --settings'.",
    )
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except ShipyardError as exc:
        print(f"shipyard: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shipyard: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # Prefect's temporary server failing to start: one line, not its traceback
        from shipyard.cli.runtime import ephemeral_timeout_error

        error = ephemeral_timeout_error(exc)
        if error is None:
            raise
        print(f"shipyard: error: {error}", file=sys.stderr)
        return 1


def run() -> None:
    """Console-script entry point."""
    code = main()
    # The work is done; what is left is the interpreter's teardown, whose garbage collection over Prefect's and
    # MLflow's objects took 3-4 s on a busy machine (a third of a cached rerun). Frozen objects are not collected,
    # so the process exits at once; atexit handlers still run (Prefect drains its logs and events).
    gc.freeze()
    sys.exit(code)
