"""Data-parallel training under ``torchrun``: gloo on CPU, nccl on GPU, one process otherwise.

The same script runs alone (``crossdiff train-model ...``) or under
``torchrun --nproc_per_node N --no-python crossdiff train-model ...``; the environment torchrun
sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) decides which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int
    """Global rank (0 when not distributed)."""
    world_size: int
    """Number of processes."""
    device: str
    """Device this process trains on."""

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    from crossdiff.runtime import join_process_group, resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    resolved = resolve_device(device or "auto")
    join_process_group(resolved)
    return DistContext(rank=rank, world_size=world_size, device=str(resolved))


def shutdown(context: DistContext) -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a copy; the input is left alone)."""
    if not context.distributed:
        return tensor
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def barrier(context: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()
