"""Settings of a harvest: which sequences, how they are batched and sharded, how stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crossdiff.errors import ConfigError, unknown_choice

DType = Literal["fp32", "bf16", "fp16"]
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class StoreConfig:
    """What a harvest writes; two harvests with equal configs and inputs write identical stores."""

    dtype: DType = "fp32"
    """Storage precision of the activations; token ids and positions are always int32."""
    split: str = "train"
    """Corpus split whose packed sequences are harvested."""
    max_sequences: int | None = None
    """Harvest at most this many sequences (a seeded sample across domains); None: all."""
    batch_sequences: int = 32
    """Sequences per forward pass (the same token batch goes through every model)."""
    shard_sequences: int = 256
    """Sequences per shard; a multiple of ``batch_sequences``. A shard is the unit of resume."""
    drop_first_position: bool = True
    """Leave out position 0 of every sequence (its activations are outliers in most models)."""
    seed: int = 0
    """Seed of the sequence order (sequences of all domains are mixed in every shard)."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", str(self.dtype), DTYPES)
        for name in ("batch_sequences", "shard_sequences"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.shard_sequences % self.batch_sequences:
            raise ConfigError(
                f"shard_sequences ({self.shard_sequences}) must be a multiple of "
                f"batch_sequences ({self.batch_sequences})"
            )
        if self.max_sequences is not None and (
            not isinstance(self.max_sequences, int) or self.max_sequences < 1
        ):
            raise ConfigError(
                f"max_sequences must be a positive integer or None, got {self.max_sequences!r}"
            )
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
