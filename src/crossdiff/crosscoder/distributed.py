"""Data parallelism for crosscoder training: the few collectives a step needs.

Every process reads the same sequence of global batches and keeps its contiguous slice; the
BatchTopK threshold is the global ``k·B``-th score and its ties go to the lowest ranks (the
earliest tokens), gradients are averaged, and the dead-latent counters and aux-k normaliser are
reduced, so a step equals the one-process step on the global batch up to float summation order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from crossdiff.errors import ConfigError
from crossdiff.runtime import join_process_group


def init_distributed(device: torch.device | None = None) -> None:
    """Join the ``torchrun`` process group if launched by it, with the backend that fits the
    device the tensors live on (``crossdiff.runtime.join_process_group``)."""
    join_process_group(device or torch.device("cpu"))


def finish_distributed() -> None:
    """Leave the process group cleanly (gloo aborts at exit if its threads are still alive)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def tie_share(counts_W2: torch.Tensor, k_total: int, rank: int) -> int:
    """How many of ``rank``'s scores equal to t it keeps, given every rank's (scores > t,
    scores = t) counts: the ``k_total − Σ(> t)`` tie slots are filled in rank order."""
    free = k_total - int(counts_W2[:, 0].sum()) - int(counts_W2[:rank, 1].sum())
    return max(0, min(free, int(counts_W2[rank, 1])))


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

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``t`` (same shape on all), in rank order."""
        gathered = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(gathered, t)
        return gathered

    def topk_cut(self, scores_N: torch.Tensor, k_total: int) -> tuple[float, int]:
        """``(t, n_ties)`` of the global BatchTopK over every process's candidate scores: t the
        ``k_total``-th largest score (−inf if there are fewer: all are kept) and how many of
        this process's scores equal to t it keeps. Ties go to the lowest ranks first, i.e.
        the earliest tokens of the global batch, as in the one-process selection."""
        top = scores_N.topk(min(k_total, scores_N.numel()), sorted=False).values
        padded = scores_N.new_full((k_total,), -torch.inf)
        padded[: top.numel()] = top
        t = float(torch.cat(self.all_gather(padded)).topk(k_total, sorted=False).values.min())
        if t == -float("inf"):
            return t, 0
        counts = torch.stack([(scores_N > t).sum(), (scores_N == t).sum()])
        counts_W2 = torch.stack(self.all_gather(counts)).cpu()
        return t, tie_share(counts_W2, k_total, self.rank)

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
