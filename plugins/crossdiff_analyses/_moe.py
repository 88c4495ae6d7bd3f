"""What the MoE analyses share: the run's MoE models, checked layers, token batches per domain.

The models are those the held-out store was harvested from (its manifest's
``config.record.models`` maps each name to the path it was loaded from); each is loaded through
``load_adapter``, so the analyses see every model, in-repo or Hugging Face, through the adapter's
MoE view only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter, load_adapter
from crossdiff.analysis import RunContext
from crossdiff.errors import ConfigError
from crossdiff.plugins import create_plugin_manager
from crossdiff_analyses._inputs import heldout_store


def run_model_paths(context: RunContext) -> dict[str, str]:
    """Model name -> the path (or hub name) it was harvested from."""
    record = heldout_store(context).record  # paths resolved against the store
    models = record.get("models")
    if not models:
        raise ConfigError(
            "the held-out store records no model paths (config.record.models); "
            "harvest it with `crossdiff run` so the MoE analyses can load the models"
        )
    return dict(models)


def run_alignments(context: RunContext) -> dict[str, np.ndarray]:
    """Model name -> its corpus-id -> model-id map, for the models harvested with an alignment."""
    from crossdiff.store import store_alignments

    return store_alignments(heldout_store(context))


def model_batches(
    batches: dict[str, list[torch.Tensor]], alignment: np.ndarray | None
) -> dict[str, list[torch.Tensor]]:
    """``batches`` of corpus ids in the model's own ids (unchanged without an alignment)."""
    if alignment is None:
        return batches
    table = torch.as_tensor(np.asarray(alignment), dtype=torch.long)
    return {domain: [table[t.long()] for t in tokens] for domain, tokens in batches.items()}


def moe_adapters(
    paths: dict[str, str], wanted: Sequence[str] | None = None
) -> dict[str, ModelAdapter]:
    """Load the MoE models among ``paths`` (or exactly ``wanted``, each of which must be MoE)."""
    manager = create_plugin_manager()
    if wanted is not None:
        unknown = [name for name in wanted if name not in paths]
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; the run has {sorted(paths)}")
        adapters = {name: load_adapter(paths[name], manager) for name in wanted}
        for name, adapter in adapters.items():
            require_moe_model(name, adapter)
        return adapters
    adapters = {name: load_adapter(path, manager) for name, path in paths.items()}
    moe = {name: a for name, a in adapters.items() if a.moe_layers()}
    if not moe:
        raise ConfigError(
            f"no Mixture-of-Experts model in this run: {sorted(paths)} are all dense "
            "(no MoE layers); the MoE analyses need at least one MoE model"
        )
    return moe


def require_moe_model(name: str, adapter: ModelAdapter) -> None:
    """Raise a :class:`ConfigError` naming ``name`` if the model has no MoE layer."""
    if not adapter.moe_layers():
        raise ConfigError(
            f"model {name!r} is dense (no MoE layers); an MoE analysis needs a "
            "Mixture-of-Experts model"
        )


def n_layers(adapter: ModelAdapter) -> int:
    """Number of blocks of the model."""
    return max(site.layer for site in adapter.sites()) + 1


def check_layers(name: str, adapter: ModelAdapter, layers: Sequence[int] | None) -> list[int]:
    """``layers`` (all MoE layers if None), each checked to be in range and an MoE layer."""
    require_moe_model(name, adapter)
    if layers is None:
        return adapter.moe_layers()
    if len(layers) == 0:
        raise ConfigError(
            f"an empty layer list was given for model {name!r}; give None for all of its MoE "
            f"layers {adapter.moe_layers()}"
        )
    total = n_layers(adapter)
    for layer in layers:
        if not 0 <= layer < total:
            raise ConfigError(
                f"layer {layer} is out of range: model {name!r} has {total} layers "
                f"(0..{total - 1}); its MoE layers are {adapter.moe_layers()}"
            )
        if layer not in adapter.moe_layers():
            raise ConfigError(
                f"layer {layer} of model {name!r} is not an MoE layer; "
                f"its MoE layers are {adapter.moe_layers()}"
            )
    return list(layers)


def check_n(name: str, adapter: ModelAdapter, layers: Sequence[int], ns: Sequence[int]) -> None:
    """Raise unless every ``n`` in ``ns`` lies in 1..K of every layer."""
    for layer in layers:
        k = adapter.top_k(layer)
        bad = [n for n in ns if not 1 <= n <= k]
        if bad:
            raise ConfigError(
                f"n={bad[0]} is out of range for layer {layer} of model {name!r}: it chooses "
                f"top-k = {k} experts per token, so n must lie in 1..{k}"
            )


def domain_batches(
    context: RunContext, max_sequences: int, batch_tokens: int
) -> dict[str, list[torch.Tensor]]:
    """Domain -> ``[B, P]`` token batches (about ``batch_tokens`` each) from the first
    ``max_sequences`` held-out sequences of each domain."""
    from crossdiff.corpus import load_sequences

    packed = load_sequences(context.stage_dir("corpus"))["validation"]
    return batches_by_domain(packed.input_ids, packed.domains, max_sequences, batch_tokens)


def batches_by_domain(
    input_ids, domains, max_sequences: int, batch_tokens: int
) -> dict[str, list[torch.Tensor]]:
    """``input_ids [N, P]`` with ``domains [N]`` -> domain -> ``[B, P]`` int64 batches of
    B = max(1, batch_tokens // P) sequences."""
    import numpy as np

    batch_sequences = max(1, batch_tokens // int(np.shape(input_ids)[1]))
    out: dict[str, list[torch.Tensor]] = {}
    domains = np.asarray(domains)
    for domain in sorted(set(domains.tolist())):
        rows = torch.as_tensor(np.asarray(input_ids)[domains == domain][:max_sequences])
        out[str(domain)] = list(rows.long().split(batch_sequences))
    return out
