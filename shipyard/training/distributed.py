"""Data parallelism: how many processes to run, the torchrun command, and each worker's world.

With more than one visible GPU the train task does not train in-process: it starts
``torchrun --standalone --nproc-per-node=<gpus> -m shipyard.training ...`` and each worker joins the
process group here (NCCL on GPUs, gloo on CPUs). Across several nodes each pod of an Indexed Job runs
torchrun with a c10d rendezvous instead (:mod:`shipyard.training.node`); the workers join the same way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Tell whether this process writes checkpoints, the model and the result."""
        return self.rank == 0


def visible_gpus() -> int:
    """Return how many CUDA devices this process can see."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_for(gpus: int) -> int:
    """Return how many training processes to run: one per GPU when there are several, else one in-process."""
    return gpus if gpus > 1 else 1


def torchrun_command(nproc: int, dataset: str, version: str, params_file: Path, data_dir: Path,
                     key: str | None = None) -> list[str]:
    """Return the command that runs ``nproc`` training workers on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "shipyard.training", "--dataset", dataset, "--version", version,
            "--params", str(params_file), "--data-dir", str(data_dir), *(["--key", key] if key else [])]


def join() -> World:
    """Join the process group when started by torchrun; otherwise return a world of one."""
    if not dist.is_torchelastic_launched():
        return World(rank=0, size=1, device=_device(0))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    rank, size = dist.get_rank(), dist.get_world_size()
    device = _device(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return World(rank=rank, size=size, device=device)


def leave(world: World) -> None:
    """Leave the process group, if this process joined one."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _device(rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # The rank within this node (torchrun's LOCAL_RANK) picks the GPU; a world of one has rank 0.
    return torch.device("cuda", dist.get_node_local_rank(fallback_rank=rank) % torch.cuda.device_count())


def any_rank(world: World, flag: bool) -> bool:
    """Return whether ``flag`` is set on any rank (every rank must call this at the same step)."""
    if world.size == 1:
        return flag
    value = torch.tensor([int(flag)], device=world.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(world: World, value: float) -> float:
    """Return the mean of a scalar over all ranks."""
    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.size


def gather_over_ranks(world: World, value: float) -> list[float]:
    """Return a scalar from every rank, in rank order (every rank must call this at the same step)."""
    if world.size == 1:
        return [value]
    tensors = [torch.zeros(1, dtype=torch.float64, device=world.device) for _ in range(world.size)]
    dist.all_gather(tensors, torch.tensor([value], dtype=torch.float64, device=world.device))
    return [float(t.item()) for t in tensors]


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.size > 1:
        dist.barrier()
