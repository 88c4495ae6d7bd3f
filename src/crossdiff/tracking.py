"""Optional experiment tracking for long runs: training metrics sent to Weights & Biases.

Off by default. ``backend = "wandb"`` logs, per optimiser step, what the training loops already
compute (the crosscoder's loss, FVE, L0, dead fraction; the language models' losses) plus
throughput. ``mode = "offline"`` (the default) writes the run under ``dir`` with no network;
``wandb sync DIR`` uploads it later. Tracking never changes what a stage computes, so it is not
part of any stage's settings or fingerprint.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from crossdiff.errors import ConfigError

BACKENDS = ("none", "wandb")
MODES = ("offline", "online")


@dataclass(frozen=True)
class TrackingConfig:
    """Where training metrics go besides the stage's own files."""

    backend: Literal["none", "wandb"] = "none"
    """``none`` (default) or ``wandb`` (needs ``pip install 'crossdiff[wandb]'``)."""
    project: str = "crossdiff"
    """The W&B project."""
    mode: Literal["offline", "online"] = "offline"
    """``offline``: write locally, no network (sync later); ``online``: stream to the server."""
    dir: str | None = None
    """Where W&B writes its files; None: the stage's own directory."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"tracking backend must be one of {list(BACKENDS)}, got {self.backend!r}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"tracking mode must be one of {list(MODES)}, got {self.mode!r}")
        if not self.project:
            raise ConfigError("tracking project must be a non-empty name")


class Tracker(Protocol):
    """Receives one dict of numbers per training step."""

    def log(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Record ``metrics`` (None values are dropped) at ``step``."""


class NullTracker:
    """Tracking switched off: every call does nothing."""

    def log(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Drop ``metrics``."""


class WandbTracker:
    """Forwards metrics to a W&B run, adding ``throughput/<unit>_per_s`` between calls."""

    def __init__(self, run: Any, units_per_step: int, unit: str) -> None:
        self.run = run
        self.units_per_step = units_per_step
        self.unit = unit
        self._last: float | None = None

    def log(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Send ``metrics`` and the throughput since the previous call."""
        now = time.perf_counter()
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        if self._last is not None and now > self._last:
            values[f"throughput/{self.unit}_per_s"] = self.units_per_step / (now - self._last)
        self._last = now
        self.run.log(values, step=step)


@contextmanager
def open_tracker(
    config: TrackingConfig | None,
    stage_dir: str | Path,
    name: str,
    settings: Mapping[str, Any],
    units_per_step: int,
    unit: str,
) -> Iterator[Tracker]:
    """A tracker for one training job (``name``, e.g. ``crosscoder`` or ``models/moe``), closed
    (the W&B run finished) when the block ends; a :class:`NullTracker` when switched off."""
    if config is None or config.backend == "none":
        yield NullTracker()
        return
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError(
            "tracking backend 'wandb' needs the wandb package: pip install 'crossdiff[wandb]'"
        ) from exc
    directory = Path(config.dir) if config.dir else Path(stage_dir)
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=config.project,
        name=name,
        mode=config.mode,
        dir=str(directory),
        config=dict(settings),
        reinit="finish_previous",
    )
    try:
        yield WandbTracker(run, units_per_step, unit)
    finally:
        run.finish()
