"""The processes of a harvest under ``torchrun``: who does what, and how errors reach every rank.

A harvest run by one process is a group of one, and every method here is then a plain call. Under
``torchrun`` the group is ``torch.distributed``'s (set up by
:func:`crossdiff.runtime.join_process_group`); the methods use its object collectives, so a
failure on one rank is raised on every rank instead of leaving the others waiting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from crossdiff.errors import StageError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one harvest."""

    rank: int
    """This process's global rank (0 alone)."""
    world: int
    """Number of processes (1 alone)."""

    @classmethod
    def current(cls) -> Ranks:
        """The group ``torchrun`` describes (joined here, gloo for the harvest's CPU-side
        messages, if the caller has not joined one yet), or a group of one."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(0, 1)
        import torch
        import torch.distributed as dist

        from crossdiff.runtime import join_process_group

        join_process_group(torch.device("cpu"))
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that locks the store and writes its manifest."""
        return self.rank == 0

    def share(self, items: list[T]) -> list[T]:
        """This rank's items of ``items``: every ``world``-th one from position ``rank``."""
        return items[self.rank :: self.world]

    def from_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 and return its result on every rank; an exception it raises
        is raised on every rank."""
        if self.world == 1:
            return action()
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome[0] = ("ok", action())
            except BaseException as error:
                outcome[0] = ("error", (type(error).__name__, str(error)))
                self._broadcast(outcome)
                raise
        self._broadcast(outcome)
        kind, value = outcome[0]
        if kind == "error":
            raise _rebuilt(*value)
        return value

    def gather(self, value: T) -> list[T]:
        """``value`` of every rank, in rank order (on every rank)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def all_succeeded(self, action: Callable[[], None]) -> None:
        """Run ``action`` on every rank, then wait for all: this rank's exception is raised
        here, and a failure elsewhere raises :class:`StageError` naming the rank."""
        error: BaseException | None = None
        try:
            action()
        except BaseException as raised:  # reported to the other ranks before it is raised
            error = raised
        if self.world == 1:
            if error is not None:
                raise error
            return
        failures = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(failures) if message]
        if failed:
            rank, message = failed[0]
            raise StageError(f"rank {rank} of the harvest failed ({message}); rerun to resume")

    @staticmethod
    def _broadcast(outcome: list[Any]) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list(outcome, src=0)


def _rebuilt(name: str, message: str) -> BaseException:
    """Rank 0's error on another rank: the same crossdiff error kind (``ConfigError``,
    ``StageError``...) with the same message, or a :class:`StageError` naming its type."""
    from crossdiff import errors

    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, errors.CrossdiffError):
        return kind(message)
    return StageError(f"rank 0 failed: {name}: {message}")
