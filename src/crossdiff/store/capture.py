"""One token batch through every model: activations at the chosen sites, flattened to rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter, Site
from crossdiff.errors import ConfigError, StageError
from crossdiff.store.checks import check_finite


@dataclass(frozen=True)
class PairedSites:
    """The models of a harvest and, per model, its resolved sites (common names, dims)."""

    adapters: Mapping[str, ModelAdapter]
    """Model name -> adapter."""
    sites: dict[str, list[Site]]
    """Model name -> its sites, in the order asked."""

    @property
    def names(self) -> dict[str, list[str]]:
        """Model name -> site names."""
        return {m: [s.name for s in sites] for m, sites in self.sites.items()}

    @property
    def dims(self) -> dict[str, dict[str, int]]:
        """Model name -> site name -> width."""
        return {m: {s.name: s.dim for s in sites} for m, sites in self.sites.items()}


def resolve_sites(
    adapters: Mapping[str, ModelAdapter], sites: Sequence[str] | Mapping[str, Sequence[str]]
) -> PairedSites:
    """Resolve site names (common or native) for every model; unknown names list valid ones.

    ``sites`` is either one list applied to every model or a mapping model -> list.
    """
    if not adapters:
        raise ConfigError("a harvest needs at least one model")
    per_model = sites if isinstance(sites, Mapping) else dict.fromkeys(adapters, sites)
    missing = [m for m in adapters if not per_model.get(m)]
    if missing:
        raise ConfigError(f"no site given for model(s) {', '.join(map(repr, missing))}")
    extra = [m for m in per_model if m not in adapters]
    if extra:
        raise ConfigError(f"sites given for unknown model(s) {', '.join(map(repr, extra))}")
    resolved: dict[str, list[Site]] = {}
    for model, adapter in adapters.items():
        chosen: list[Site] = []
        for name in per_model[model]:
            try:
                site = adapter.site(name)
            except ConfigError as error:
                raise ConfigError(f"model {model!r}: {error}") from error
            if site not in chosen:
                chosen.append(site)
        resolved[model] = chosen
    return PairedSites(adapters, resolved)


def capture_rows(
    paired: PairedSites,
    tokens: np.ndarray,
    sequences: np.ndarray,
    drop_first_position: bool,
    alignments: Mapping[str, np.ndarray] | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """Feed ``tokens [B, P]`` (corpus ids) to every model; (model, site) -> rows ``[B·P', D]``.

    ``P' = P - 1`` if ``drop_first_position``; rows are in (sequence, position) order. Any NaN or
    inf raises before anything is returned. ``sequences [B]`` only label error messages.
    """
    alignments = alignments or {}
    start = 1 if drop_first_position else 0
    out: dict[tuple[str, str], torch.Tensor] = {}
    with torch.inference_mode():
        for model, adapter in paired.adapters.items():
            ids = alignments[model][tokens] if model in alignments else tokens
            batch = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))  # [B, P]
            names = [site.name for site in paired.sites[model]]
            captured = adapter.capture(batch, names)
            for site in paired.sites[model]:
                acts = captured.get(site.name)
                if acts is None:
                    acts = captured.get(site.native)
                if acts is None or tuple(acts.shape) != (*batch.shape, site.dim):
                    shape = None if acts is None else tuple(acts.shape)
                    raise StageError(
                        f"adapter of model {model!r} returned {shape} for site {site.name!r}; "
                        f"expected {(*batch.shape, site.dim)} (the adapter breaks the contract)"
                    )
                check_finite(acts, model, site.name, sequences)
                rows = acts[:, start:].reshape(-1, site.dim)  # [B·P', D]
                out[model, site.name] = rows.to("cpu", torch.float32)
    return out


def row_metadata(
    tokens: np.ndarray, sequences: np.ndarray, domains: np.ndarray, drop_first_position: bool
) -> dict[str, np.ndarray]:
    """Per-row token id, position, sequence index and domain index for ``tokens [B, P]``."""
    start = 1 if drop_first_position else 0
    n_rows, length = tokens.shape
    kept = length - start
    return {
        "tokens": np.ascontiguousarray(tokens[:, start:], dtype=np.int32).reshape(-1),
        "positions": np.tile(np.arange(start, length, dtype=np.int32), n_rows),
        "sequences": np.repeat(sequences.astype(np.int32), kept),
        "domains": np.repeat(domains.astype(np.uint8), kept),
    }


def cast_models(adapters: Mapping[str, ModelAdapter], dtype: str) -> None:
    """Run every adapter's model in ``dtype`` (``bf16`` or ``fp16``); activations are stored
    in the store's own dtype whatever the models compute in."""
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    for adapter in adapters.values():
        adapter.model.to(torch_dtype)
