"""Per-model metrics of a trained batch: routing on held-out samples, then the weight metrics."""

from __future__ import annotations

import math
from typing import Any

import torch

from crossdiff.config import to_dict
from crossdiff.toy import metrics
from crossdiff.toy.data import (
    EVAL_SEED_OFFSET,
    UniformStream,
    feature_importance,
    features_from_uniforms,
)
from crossdiff.toy.model import forward
from crossdiff.toy.train import TrainedBatch, per_model, reconstruction_loss

EVAL_SAMPLES = 4096
"""Held-out samples per model for expert usage and the evaluation loss."""


def evaluate_batch(batch: TrainedBatch, samples: int = EVAL_SAMPLES) -> list[dict[str, Any]]:
    """One JSON-ready record per model: its config, loss, routing and superposition metrics.

    Routing is measured on the held-out samples with at least one feature present (an all-zero
    input carries nothing to route, and its tie is broken towards expert 0). Per expert (lists over
    experts, then features): ``usage`` (mean routing share, summing to 1: each sample's top-k
    weights divided by their sum, so Switch-style weights below 1 count as a whole sample),
    ``feature_usage`` (mean routing share over the samples where feature i is present),
    ``feature_weight`` (mean routing weight itself there: below the share for Switch weights),
    ``expert_dimensionality`` D*, ``feature_dimensionality`` D_i, ``feature_norm`` ‖W_i‖,
    ``superposition``, ``feature_states`` (0 ignored, 1 dedicated, 2 superposed),
    ``monosemantic_fraction_per_expert``, ``specialisation_per_expert``. Per model:
    ``weighted_dimensionality`` of every feature (its experts' D_i weighted by ``feature_usage``:
    how the feature is represented when it occurs) and ``weighted_norm2`` (its experts' ‖W_i‖²
    weighted by ``feature_weight``: the gain x̂_i/x_i the feature gets, ~1 when represented,
    whatever the weighting), the
    usage-weighted ``monosemantic_fraction`` and ``specialisation``, ``router_uniformity``,
    ``loss`` (held-out), ``train_loss`` and ``renormalised`` (the resolved ``router_weights``).
    """
    configs = batch.configs
    first = configs[0]
    W_MEHN = batch.params.W_MEHN
    device = W_MEHN.device
    stream = UniformStream(
        [c.seed for c in configs], samples, first.n_features, EVAL_SEED_OFFSET, device
    )
    sparsity_M = per_model(configs, "sparsity", device)
    with torch.no_grad():
        x_MBN = features_from_uniforms(
            stream.next(), sparsity_M, first.correlation, first.group_size
        )
        out = forward(batch.params, x_MBN)
        importance_MN = feature_importance(
            first.n_features, per_model(configs, "importance_decay", device)
        )
        loss_M = reconstruction_loss(x_MBN, out, importance_MN)
    present_MBN = (x_MBN > 0).double()
    active_MB = present_MBN.amax(-1)
    weights_MBE = out.gates_MBE.double()
    gates_MBE = weights_MBE / weights_MBE.sum(-1, keepdim=True).clamp_min(1e-30)
    usage = (gates_MBE * active_MB[..., None]).sum(1) / active_MB.sum(1).clamp_min(1)[:, None]
    present_M1N = present_MBN.sum(1).clamp_min(1)[:, None]
    feature_usage_MEN = torch.einsum("mbe,mbn->men", gates_MBE, present_MBN) / present_M1N
    feature_weight_MEN = torch.einsum("mbe,mbn->men", weights_MBE, present_MBN) / present_M1N
    W = W_MEHN.double()
    dimensionality_MEN = metrics.feature_dimensionality(W)
    monosemantic_ME = metrics.monosemantic_fraction(W)
    specialisation_ME = metrics.expert_specialisation(W)
    per_expert = {
        "usage": usage,
        "feature_usage": feature_usage_MEN,
        "feature_weight": feature_weight_MEN,
        "expert_dimensionality": metrics.expert_dimensionality(W),
        "feature_dimensionality": dimensionality_MEN,
        "feature_norm": (W**2).sum(-2).sqrt(),
        "superposition": metrics.superposition(W),
        "feature_states": metrics.feature_states(W),
        "monosemantic_fraction_per_expert": monosemantic_ME,
        "specialisation_per_expert": specialisation_ME,
    }
    model_level = {
        "weighted_dimensionality": (dimensionality_MEN * feature_usage_MEN).sum(1),
        "weighted_norm2": ((W**2).sum(-2) * feature_weight_MEN).sum(1),
        "monosemantic_fraction": metrics.usage_weighted(monosemantic_ME, usage),
        "specialisation": metrics.usage_weighted(specialisation_ME, usage),
        "loss": loss_M,
        "train_loss": batch.loss_M,
    }
    records = []
    for index, config in enumerate(configs):
        E = config.n_experts  # the batch may pad a model's experts: keep its own
        record: dict[str, Any] = {
            "config": to_dict(config),
            "k_over_E": config.network_sparsity,
            "renormalised": config.renormalised,
        }
        record.update({name: plain(value[index, :E]) for name, value in per_expert.items()})
        record.update({name: plain(value[index]) for name, value in model_level.items()})
        record["router_uniformity"] = metrics.router_uniformity(usage[index, :E]).item()
        records.append(record)
    return records


def plain(value: torch.Tensor) -> Any:
    """A tensor as nested Python numbers, NaN as None (JSON has no NaN)."""
    data = value.detach().cpu().tolist()

    def clean(item: Any) -> Any:
        if isinstance(item, list):
            return [clean(i) for i in item]
        if isinstance(item, float) and math.isnan(item):
            return None
        return item

    return clean(data)
