"""What each pod of a multi-node training Job runs: pull the data, then become torchrun for this node.

``python -m shipyard.training.node --nnodes N --nproc-per-node P --rdzv-endpoint HOST:PORT --rdzv-id ID
--rdzv-timeout S --dataset D --version V --params FILE --node-rank $(JOB_COMPLETION_INDEX)``

Kubernetes numbers the pods of an Indexed Job through ``JOB_COMPLETION_INDEX``, and the kubelet expands
``$(JOB_COMPLETION_INDEX)`` in the container's arguments from it; this module turns it into torchrun's
``--node-rank`` and makes index 0 host the c10d rendezvous store (the endpoint is index 0's stable
DNS name). torchrun then starts ``P`` workers of ``python -m shipyard.training``, which join one process
group of ``N x P`` ranks (NCCL on GPUs, gloo on CPUs). ``--max-restarts=0``: a lost worker ends this node's
torchrun, so the whole attempt fails and the next attempt resumes from the newest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath

from shipyard import datasets
from shipyard.errors import ShipyardError
from shipyard.settings import load_settings
from shipyard.storage import filesystem

# Set by the Job controller in every pod of an Indexed Job (Kubernetes' contract, not a Shipyard setting).
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
NODE_RANK_ARGUMENT = f"$({INDEX_VARIABLE})"  # expanded by the kubelet
RENDEZVOUS_PORT = 29400


@dataclass(frozen=True)
class NodeArgs:
    """The arguments every pod of one training Job gets (the same for all of them)."""

    nnodes: int
    nproc_per_node: int
    rdzv_endpoint: str
    rdzv_id: str
    rdzv_timeout_seconds: int
    dataset: str
    version: str
    params_file: PurePath
    key: str = ""  # a forced retraining's own key; "" derives it from data, params and code

    def argv(self) -> list[str]:
        """Return them as command-line arguments of this module."""
        return ["--nnodes", str(self.nnodes), "--nproc-per-node", str(self.nproc_per_node),
                "--rdzv-endpoint", self.rdzv_endpoint, "--rdzv-id", self.rdzv_id,
                "--rdzv-timeout", str(self.rdzv_timeout_seconds), "--dataset", self.dataset,
                "--version", self.version, "--params", str(self.params_file), "--node-rank", NODE_RANK_ARGUMENT,
                *(["--key", self.key] if self.key else [])]

    def command(self) -> list[str]:
        """Return the container command: this module with these arguments."""
        return ["python", "-m", "shipyard.training.node", *self.argv()]


def torchrun_command(args: NodeArgs, node_rank: int, data_dir: Path) -> list[str]:
    """Return the torchrun command of the node with this rank."""
    # read_timeout bounds how long a worker waits to reach index 0's TCP store (torch's default: 60 s); pods start
    # in any order and index 0's image pull can take minutes, so it gets the same budget as joining.
    timeout = args.rdzv_timeout_seconds
    conf = f"join_timeout={timeout},read_timeout={timeout},is_host={'1' if node_rank == 0 else '0'}"
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={args.nnodes}",
            f"--nproc-per-node={args.nproc_per_node}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={args.rdzv_endpoint}", f"--rdzv-id={args.rdzv_id}", f"--rdzv-conf={conf}",
            "--max-restarts=0", "-m", "shipyard.training", "--dataset", args.dataset, "--version", args.version,
            "--params", str(args.params_file), "--data-dir", str(data_dir),
            *(["--key", args.key] if args.key else [])]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shipyard.training.node", description=__doc__.splitlines()[0])
    parser.add_argument("--nnodes", type=int, required=True, help="pods in the Job")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="workers (GPUs) per pod")
    parser.add_argument("--rdzv-endpoint", required=True, help="host:port of the c10d rendezvous (index 0)")
    parser.add_argument("--rdzv-id", required=True, help="rendezvous id: the Job's name")
    parser.add_argument("--rdzv-timeout", type=int, required=True, help="seconds to wait for every node")
    parser.add_argument("--dataset", required=True, help="dataset name in the store")
    parser.add_argument("--version", required=True, help="dataset version id")
    parser.add_argument("--params", required=True, type=Path, help="JSON file with the training params")
    parser.add_argument("--key", default="", help="training key (default: derived from data, params and code)")
    parser.add_argument("--node-rank", required=True, help=f"this pod's index: {NODE_RANK_ARGUMENT} in the Job")
    return parser


def _node_rank(raw: str, nnodes: int) -> int:
    if not raw.isdigit() or int(raw) >= nnodes:
        raise ShipyardError(f"--node-rank '{raw}' is not a node index below {nnodes}; this module runs in the pods "
                            f"of an Indexed Job, where the kubelet expands {NODE_RANK_ARGUMENT}")
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    """Pull the dataset version, then exec torchrun for this node; print one line and return 1 on an error."""
    ns = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = NodeArgs(ns.nnodes, ns.nproc_per_node, ns.rdzv_endpoint, ns.rdzv_id, ns.rdzv_timeout, ns.dataset,
                    ns.version, ns.params, ns.key)
    try:
        rank = _node_rank(ns.node_rank, args.nnodes)
        settings = load_settings()
        data_dir = datasets.pull(filesystem(settings), args.dataset, args.version,
                                 settings.home / "cache" / "datasets")
    except (ShipyardError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = torchrun_command(args, rank, data_dir)
    print(f"node {rank}/{args.nnodes}: {' '.join(command)}", flush=True)
    # exec, not a child: the pod's SIGTERM reaches torchrun, which forwards it to the workers (they checkpoint).
    os.execv(command[0], command)  # noqa: S606 - an argument list, no shell
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
