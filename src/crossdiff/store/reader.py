"""Shuffled training batches from a store, with memory bounded by a few shards.

Each pass visits the shards in a seeded order, ``shards_in_buffer`` at a time: their rows are
loaded, permuted, and cut into batches; rows left over (fewer than a batch) move on to the next
group, so no row is dropped until the very end of a pass. Memory holds at most
``shards_in_buffer`` shards plus one batch, whatever the size of the store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from crossdiff.errors import ConfigError, unknown_choice
from crossdiff.store.format import StoreInfo, act_key, batch_keys, damaged_shard, open_store


class StoreReader:
    """Iterate ``{batch key: [batch_size, D]}`` float32 batches from a store, shuffled.

    Batch keys are the model names when each model has one site (``model/site`` otherwise);
    ``sites`` picks one site per model (model -> site). With ``normalize`` each model's rows are
    multiplied by its saved factor, so E‖x‖ ≈ √D. ``shards`` restricts the reader to some
    shard indices (e.g. hold a few out for evaluation). Iterating makes ``passes`` passes over
    the data (None: endless), each shuffled anew from (seed, pass); every iteration yields the
    same sequence of batches, so a resumed training run can replay and skip.
    """

    def __init__(
        self,
        store: str | Path | StoreInfo,
        batch_size: int,
        *,
        sites: dict[str, str] | None = None,
        seed: int = 0,
        shards_in_buffer: int = 4,
        normalize: bool = True,
        shards: Sequence[int] | None = None,
        drop_last: bool = False,
        passes: int | None = 1,
    ) -> None:
        self.info = store if isinstance(store, StoreInfo) else open_store(store)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(shards_in_buffer, int) or shards_in_buffer < 1:
            raise ConfigError(
                f"shards_in_buffer must be a positive integer, got {shards_in_buffer!r}"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.shards_in_buffer = shards_in_buffer
        self.normalize = normalize
        self.drop_last = drop_last
        if passes is not None and (not isinstance(passes, int) or passes < 1):
            raise ConfigError(f"passes must be a positive integer or None, got {passes!r}")
        self.passes = passes
        self.keys = batch_keys(self._chosen_sites(sites))
        all_paths = self.info.shard_paths()
        indices = range(len(all_paths)) if shards is None else shards
        for i in indices:
            if not 0 <= i < len(all_paths):
                raise ConfigError(f"shard {i} does not exist; the store has {len(all_paths)}")
        self.paths = [all_paths[i] for i in indices]

    def _chosen_sites(self, sites: dict[str, str] | None) -> dict[str, list[str]]:
        available = self.info.sites
        if sites is None:
            return available
        chosen = {}
        for model, site in sites.items():
            if model not in available:
                raise unknown_choice("model", model, available)
            if site not in available[model]:
                raise unknown_choice(f"site of model {model!r}", site, available[model])
            chosen[model] = [site]
        return chosen

    def factors(self) -> dict[str, float]:
        """Batch key -> the multiplier applied to its rows (1.0 without ``normalize``)."""
        saved = self.info.norm_factors
        return {
            key: float(saved[model][site]) if self.normalize else 1.0
            for key, (model, site) in self.keys.items()
        }

    def __len__(self) -> int:
        """Batches in all passes (raises TypeError when passes are endless)."""
        if self.passes is None:
            raise TypeError("an endless StoreReader (passes=None) has no length")
        rows = sum(_shard_rows(p) for p in self.paths)
        per_pass = rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
        return per_pass * self.passes

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every pass in turn, each over all chosen shards in a fresh seeded order."""
        count = itertools.count() if self.passes is None else range(self.passes)
        for index in count:
            yield from self.one_pass(index)

    def one_pass(self, index: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Pass number ``index``: every row once, shuffled from (seed, ``index``)."""
        rng = np.random.default_rng([self.seed, index])
        factors = self.factors()
        order = rng.permutation(len(self.paths))
        carry: dict[str, torch.Tensor] | None = None
        for group in range(0, len(order), self.shards_in_buffer):
            buffer = self._load(
                [self.paths[i] for i in order[group : group + self.shards_in_buffer]]
            )
            if carry is not None:
                buffer = {k: torch.cat([carry[k], buffer[k]]) for k in buffer}
            n_rows = len(next(iter(buffer.values())))
            perm = torch.from_numpy(rng.permutation(n_rows))
            buffer = {k: v[perm] for k, v in buffer.items()}  # [rows, D], shuffled
            n_full = n_rows // self.batch_size * self.batch_size
            for start in range(0, n_full, self.batch_size):
                yield {
                    k: v[start : start + self.batch_size].float() * factors[k]
                    for k, v in buffer.items()
                }
            carry = {k: v[n_full:] for k, v in buffer.items()}
        if carry is not None and not self.drop_last and len(next(iter(carry.values()))):
            yield {k: v.float() * factors[k] for k, v in carry.items()}

    def _load(self, paths: list[Path]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        for path in paths:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key, (model, site) in self.keys.items():
                        parts[key].append(handle.get_tensor(act_key(model, site)))
            except Exception as error:  # safetensors raises its own error type
                raise damaged_shard(path, error) from error
        return {k: torch.cat(v) for k, v in parts.items()}


def _shard_rows(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(handle.get_slice("tokens").get_shape()[0])
    except Exception as error:  # safetensors raises its own error type
        raise damaged_shard(path, error) from error


def load_shard(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of one shard: ``tokens``, ``positions``, ``sequences``, ``domains``, acts."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error type
        raise damaged_shard(path, error) from error
