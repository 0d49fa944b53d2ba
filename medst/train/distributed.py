"""Several processes: set-up from ``torchrun``'s environment, logging over all of them.

BatchNorm over every process's rows lives with the models (:mod:`medst.models.norm`).

``torchrun --nproc_per_node=2 -m medst.cli pretrain ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; :func:`init` reads them and joins the process group (NCCL on GPUs, gloo on CPUs).
With one process nothing is initialised and everything below is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medst.utils import is_distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """Average a (detached) tensor over processes, e.g. to log one loss for the whole run."""
    if not is_distributed():
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()
