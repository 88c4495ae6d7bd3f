"""Data parallelism for crosscoder training: the few collectives a step needs.

Every process reads the same sequence of global batches and keeps its contiguous slice; the
BatchTopK threshold is the global ``k·B``-th score, gradients are averaged, and the dead-latent
counters and aux-k normaliser are reduced, so a step equals the one-process step on the global
batch up to float summation order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

from crossdiff.errors import ConfigError


def backend_for(device: torch.device) -> str:
    """The process-group backend for tensors on ``device``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device | None = None) -> None:
    """Join the ``torchrun`` process group if launched by it, with the backend that fits the
    device the tensors live on (gloo for CPU tensors even where CUDA is present)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = device or torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device))


def finish_distributed() -> None:
    """Leave the process group cleanly (gloo aborts at exit if its threads are still alive)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class Collectives:
    """The collectives of one process: no-ops when not running under a process group."""

    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0

    def local_slice(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's contiguous share of a global batch."""
        n = next(iter(batch.values())).shape[0]
        if n % self.world:
            raise ConfigError(f"global batch {n} is not divisible by {self.world} processes")
        size = n // self.world
        return {k: v[self.rank * size : (self.rank + 1) * size] for k, v in batch.items()}

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over processes in place and return it."""
        if self.active:
            dist.all_reduce(t)
        return t

    def kth_largest(self, top: torch.Tensor, k_total: int) -> torch.Tensor:
        """The ``k_total``-th largest value over every process's ``top`` (−inf if too few)."""
        padded = top.new_full((k_total,), -torch.inf)
        padded[: top.numel()] = top
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        return torch.cat(gathered).topk(k_total, sorted=False).values.min()

    def average_gradients_(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over processes (one flat all-reduce)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()

    def barrier(self) -> None:
        """Wait for every process."""
        if self.active:
            dist.barrier()
