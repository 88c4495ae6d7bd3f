"""Scan a crosscoder's latents over a store: firing counts (overall, per domain) and top rows.

The analyses of features (density, dashboards, expert alignment) all start from one pass of the
crosscoder's inference encoder over held-out activations; this module is that pass.
Shapes: ``B`` rows of a batch, ``L`` latents, ``N`` kept top activations per latent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from crossdiff.crosscoder import Crosscoder
from crossdiff.errors import ConfigError
from crossdiff.store import StoreInfo, load_shard
from crossdiff.store.format import act_key


@dataclass
class LatentScan:
    """What one pass of the inference encoder over a store saw."""

    n_tokens: int
    """Rows (tokens) scanned."""
    fires_L: torch.Tensor
    """``[L]`` int64: tokens on which each latent was active."""
    domain_tokens: dict[str, int]
    """Domain -> tokens of that domain scanned."""
    domain_fires: dict[str, torch.Tensor]
    """Domain -> ``[L]`` int64 firing counts on that domain's tokens."""
    top_values_NL: torch.Tensor
    """``[N, L]`` each latent's N largest activations, descending (0 where fewer fired)."""
    top_rows_NL: torch.Tensor
    """``[N, L]`` int64 global row index (in shard order) of each top activation; -1 if none."""
    row_meta: dict[str, torch.Tensor] = field(default_factory=dict)
    """Global row -> ``tokens``, ``positions``, ``sequences``, ``domains`` of the store."""

    @property
    def density_L(self) -> torch.Tensor:
        """``[L]`` float64 firing frequency: active tokens / tokens scanned."""
        return self.fires_L.double() / max(self.n_tokens, 1)

    def domain_density(self, domain: str) -> torch.Tensor:
        """``[L]`` float64 firing frequency on ``domain``'s tokens."""
        return self.domain_fires[domain].double() / max(self.domain_tokens[domain], 1)


def iter_store_batches(
    crosscoder: Crosscoder, store: StoreInfo, batch_size: int = 4096
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Yield ``(raw activations by model [B, D], metadata by name [B])`` in shard order.

    Activations are as harvested: the crosscoder applies its own saved input scales.
    """
    sites = _crosscoder_sites(crosscoder, store)
    for path in store.shard_paths():
        shard = load_shard(path)
        n_rows = len(shard["tokens"])
        for start in range(0, n_rows, batch_size):
            rows = slice(start, start + batch_size)
            acts = {key: shard[act_key(m, s)][rows].float() for key, (m, s) in sites.items()}
            meta = {k: shard[k][rows] for k in ("tokens", "positions", "sequences", "domains")}
            yield acts, meta


def scan_latents(
    crosscoder: Crosscoder, store: StoreInfo, top_n: int = 16, batch_size: int = 4096
) -> LatentScan:
    """Encode every row of ``store`` with the inference threshold and tally the latents."""
    batches = iter_store_batches(crosscoder, store, batch_size)
    return scan_batches(crosscoder, batches, store.domains, top_n)


@torch.no_grad()
def scan_batches(
    crosscoder: Crosscoder,
    batches: Iterable[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
    domains: list[str],
    top_n: int = 16,
) -> LatentScan:
    """Tally latents over ``(activations, metadata)`` batches; ``metadata["domains"]`` holds
    indices into ``domains`` (other metadata is kept per row for the caller)."""
    n_latents = crosscoder.cfg.dict_size
    fires_L = torch.zeros(n_latents, dtype=torch.long)
    domain_fires = {d: torch.zeros(n_latents, dtype=torch.long) for d in domains}
    domain_tokens = dict.fromkeys(domains, 0)
    top_values_NL = torch.zeros(top_n, n_latents)
    top_rows_NL = torch.full((top_n, n_latents), -1, dtype=torch.long)
    meta_parts: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for acts, meta in batches:
        latents_BL = crosscoder.encode(acts).to("cpu", torch.float32)  # any device and dtype
        active_BL = latents_BL > 0
        fires_L += active_BL.sum(0)
        for index, domain in enumerate(domains):
            mask_B = meta["domains"].long() == index
            domain_tokens[domain] += int(mask_B.sum())
            domain_fires[domain] += active_BL[mask_B].sum(0)
        rows_B = torch.arange(offset, offset + len(latents_BL))
        values = torch.cat([top_values_NL, latents_BL])
        rows = torch.cat([top_rows_NL, rows_B[:, None].expand_as(latents_BL)])
        top_values_NL, order = values.topk(top_n, dim=0)
        top_rows_NL = rows.gather(0, order)
        for name, values_B in meta.items():
            meta_parts.setdefault(name, []).append(values_B)
        offset += len(latents_BL)
    if offset == 0:
        raise ConfigError("no rows to scan: the activations are empty")
    top_rows_NL[top_values_NL <= 0] = -1
    row_meta = {name: torch.cat(parts) for name, parts in meta_parts.items()}
    return LatentScan(
        offset, fires_L, domain_tokens, domain_fires, top_values_NL, top_rows_NL, row_meta
    )


def _crosscoder_sites(crosscoder: Crosscoder, store: StoreInfo) -> dict[str, tuple[str, str]]:
    """Input key -> (model, store site) for every input the crosscoder reads: one site per
    model, or the crosscoder's ``sites`` of every model."""
    sites = {}
    for model in crosscoder.cfg.models:
        if model not in store.sites:
            raise ConfigError(
                f"the store at {str(store.path)!r} has no model {model!r}; "
                f"it has {sorted(store.sites)}"
            )
        if crosscoder.cfg.sites:
            for site in crosscoder.cfg.sites:
                if site not in store.sites[model]:
                    raise ConfigError(
                        f"site {site!r} is missing for model {model!r} in the store at "
                        f"{str(store.path)!r} (it has {store.sites[model]})"
                    )
                sites[f"{model}/{site}"] = (model, site)
            continue
        if len(store.sites[model]) != 1:
            raise ConfigError(
                f"model {model!r} has several sites in the store ({store.sites[model]}); "
                "a crosscoder reads one site per model"
            )
        sites[model] = (model, store.sites[model][0])
    return sites
