"""Run one training process: ``python -m shipyard.training --dataset D --version V --params P --data-dir DIR``.

This is what each torchrun worker runs on a multi-GPU node, and what you can run by hand to train without
Prefect. ``--params`` is a JSON file of :class:`~shipyard.params.TrainParams`. The store comes from the
usual ``SHIPYARD_*`` settings. A SIGTERM writes a checkpoint and exits 143; a rerun resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from shipyard.errors import ShipyardError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training.metrics import EpochMetrics
from shipyard.training.trainer import train


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shipyard.training", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="dataset name in the store")
    parser.add_argument("--version", required=True, help="dataset version id")
    parser.add_argument("--params", required=True, type=Path, help="JSON file with the training params")
    parser.add_argument("--data-dir", required=True, type=Path, help="directory holding the pulled version")
    parser.add_argument("--key", default=None, help="training key (default: derived from data, params and code)")
    return parser


def _print_epoch(entry: EpochMetrics) -> None:
    shown = " ".join(f"{k}={v:.4f}" for k, v in entry.metrics.items())
    print(f"epoch {entry.epoch} step {entry.step} train_loss={entry.train_loss:.4f} {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Train and print one line per epoch; print one line and return 1 on an expected error."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = TrainParams.model_validate_json(args.params.read_text())
        store = filesystem(load_settings())
        dataset = DatasetRef(name=args.dataset, version=args.version)
        result = train(store, dataset, params, args.data_dir, on_epoch=_print_epoch, key=args.key)
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"error: {args.params}: field '{'.'.join(map(str, err['loc']))}': {err['msg']}", file=sys.stderr)
        return 1
    except (ShipyardError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"finished {result.key}: {result.metrics}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
