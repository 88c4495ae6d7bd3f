"""Streaming mode: the batches a store reader yields, straight from the models, with no disk.

Token batches go through every model as in a harvest; their rows fill a buffer of
``buffer_batches`` forward batches, which is shuffled and cut into training batches. Without
given factors, the normalisation factors are estimated from the first buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter
from crossdiff.corpus import PackedSequences
from crossdiff.errors import ConfigError
from crossdiff.store.capture import capture_rows, resolve_sites
from crossdiff.store.config import StoreConfig
from crossdiff.store.format import batch_keys
from crossdiff.store.harvest import sequence_order
from crossdiff.store.normalization import norm_factor, norm_sum


class StreamingSource:
    """Iterate ``{batch key: [batch_size, D]}`` float32 batches computed on the fly.

    Same keys and normalisation as :class:`~crossdiff.store.reader.StoreReader`; memory holds
    ``buffer_batches`` forward batches of rows. ``factors`` (batch key -> multiplier) fixes the
    normalisation; otherwise it is estimated once from the first buffer and kept.
    """

    def __init__(
        self,
        models: Mapping[str, ModelAdapter],
        sites: Sequence[str] | Mapping[str, Sequence[str]],
        sequences: PackedSequences,
        batch_size: int,
        config: StoreConfig | None = None,
        *,
        buffer_batches: int = 4,
        normalize: bool = True,
        factors: dict[str, float] | None = None,
        alignments: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(buffer_batches, int) or buffer_batches < 1:
            raise ConfigError(f"buffer_batches must be a positive integer, got {buffer_batches!r}")
        self.config = config or StoreConfig()
        self.paired = resolve_sites(models, sites)
        self.sequences = sequences
        self.batch_size = batch_size
        self.buffer_batches = buffer_batches
        self.normalize = normalize
        self.alignments = alignments
        self.keys = batch_keys(self.paired.names)
        self._factors = dict(factors) if factors is not None else None

    def factors(self) -> dict[str, float] | None:
        """Batch key -> multiplier, once known (given, or estimated from the first buffer)."""
        return self._factors

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the sequences (seeded order); the remainder is the last, smaller batch.

        Every iteration yields the same batches (given deterministic models).
        """
        rng = np.random.default_rng([self.config.seed, 1])
        order = sequence_order(len(self.sequences.input_ids), self.config)
        step = self.config.batch_sequences
        carry: dict[str, torch.Tensor] | None = None
        for group in range(0, len(order), step * self.buffer_batches):
            buffer = self._capture(order[group : group + step * self.buffer_batches])
            if carry is not None:
                buffer = {k: torch.cat([carry[k], buffer[k]]) for k in buffer}
            factors = self._factors_for(buffer)
            n_rows = len(next(iter(buffer.values())))
            perm = torch.from_numpy(rng.permutation(n_rows))
            buffer = {k: v[perm] for k, v in buffer.items()}  # [rows, D]
            n_full = n_rows // self.batch_size * self.batch_size
            for start in range(0, n_full, self.batch_size):
                yield {
                    k: v[start : start + self.batch_size] * factors[k] for k, v in buffer.items()
                }
            carry = {k: v[n_full:] for k, v in buffer.items()}
        if carry is not None and len(next(iter(carry.values()))):
            factors = self._factors_for(carry)
            yield {k: v * factors[k] for k, v in carry.items()}

    def _capture(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        step = self.config.batch_sequences
        for start in range(0, len(rows), step):
            batch = rows[start : start + step]
            acts = capture_rows(
                self.paired,
                self.sequences.input_ids[batch],
                batch,
                self.config.drop_first_position,
                self.alignments,
            )
            for key, pair in self.keys.items():
                parts[key].append(acts[pair])
        return {k: torch.cat(v) for k, v in parts.items()}

    def _factors_for(self, buffer: dict[str, torch.Tensor]) -> dict[str, float]:
        if not self.normalize:
            return dict.fromkeys(self.keys, 1.0)
        if self._factors is None:
            self._factors = {
                k: norm_factor(norm_sum(v), len(v), v.shape[-1]) for k, v in buffer.items()
            }
        return self._factors
