"""Training batches and validation sets drawn from a corpus's packed sequences."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crossdiff.errors import ConfigError

if TYPE_CHECKING:
    from crossdiff.corpus import PackedSequences


class BatchOrder:
    """A seeded, stateless order of training rows: epoch ``e`` is a permutation seeded by
    ``(seed, e)``, and step ``s`` takes the next ``batch_size`` rows of that endless stream.

    Because the rows of a step depend only on ``(seed, step)``, a resumed run needs no sampler
    state, and DDP ranks agree on the global batch without talking.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        """Order ``n_rows`` rows into global batches of ``batch_size``."""
        if n_rows < 1:
            raise ConfigError("the corpus has no training sequences")
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            }
        return self._cache[epoch]

    def global_batch(self, step: int) -> np.ndarray:
        """Row indices ``[batch_size]`` of step ``step`` (0-based)."""
        start = step * self.batch_size
        rows = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, self.n_rows)
            rows.append(self._epoch(epoch)[offset])
        return np.asarray(rows, dtype=np.int64)

    def local_batch(self, step: int, rank: int, world_size: int) -> np.ndarray:
        """This rank's contiguous share of the global batch of ``step``."""
        rows = self.global_batch(step)
        share = self.batch_size // world_size
        return rows[rank * share : (rank + 1) * share]


def validation_sets(validation: PackedSequences, per_domain: int | None) -> dict[str, np.ndarray]:
    """The first ``per_domain`` validation sequences of each domain (all if None), by domain."""
    sets = {}
    for domain in sorted(set(validation.domains.tolist())):
        rows = validation.of_domain(domain)
        sets[domain] = rows if per_domain is None else rows[:per_domain]
    return sets


def check_vocabulary(
    sequences: dict[str, PackedSequences], vocab_size: int, tokenizer_size: int, where: str | Path
) -> None:
    """Raise :class:`ConfigError` unless the model's vocabulary fits the corpus tokenizer's."""
    if tokenizer_size != vocab_size:
        raise ConfigError(
            f"model.vocab_size {vocab_size} differs from the corpus tokenizer at {str(where)!r}, "
            f"which has {tokenizer_size} tokens; the model's vocabulary must equal the tokenizer's"
        )
    for split, packed in sequences.items():
        top = int(packed.input_ids.max()) if packed.input_ids.size else -1
        if top >= vocab_size:
            raise ConfigError(
                f"corpus {str(where)!r} split {split!r} has token id {top}, outside "
                f"model.vocab_size {vocab_size}"
            )
