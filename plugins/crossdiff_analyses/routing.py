"""``routing``: how each MoE layer of each MoE model spreads each domain's tokens over its experts.

Definitions (``T_D`` tokens of domain D, ``K`` experts chosen per token out of ``E``):

- **share** of expert e in D: N_{e,D} / N_D, the fraction of D's tokens whose top-k holds e.
  The shares of a domain sum to K (each token is counted by its K experts); uniform routing gives
  K/E to every expert.
- **experts for half**: the fewest experts whose routing decisions (token, slot pairs) cover at
  least half of the domain's T_D·K decisions, taking the busiest experts first; uniform routing
  needs ⌈E/2⌉ (``uniform_experts_for_half``).
- **share elsewhere** of D's busiest expert e*: its share of the tokens of every OTHER domain,
  pooled (None with one domain). A domain-specific expert has a share on D well above it; a
  router whose busiest expert is the same everywhere has both shares alike.
- **normalised entropy**: H(p)/log E of p_e = N_{e,D} / (K·N_D); 1 for uniform routing.
- **co-activation**: P(j ∈ top-k | i ∈ top-k) over all tokens (diagonal 1; NaN for unused i),
  and its lift over independent routing, P(i and j) / (P(i)·P(j)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter
from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.figures import new_figure, save_figure
from crossdiff_analyses._moe import (
    check_layers,
    domain_batches,
    model_batches,
    moe_adapters,
    run_alignments,
    run_model_paths,
)

ALL = "all"
"""The key of the statistics over every domain together."""


@dataclass(frozen=True)
class RoutingSettings:
    """Which models and layers, and how many held-out sequences per domain."""

    models: tuple[str, ...] | None = None
    """Models to analyse (each must be MoE); None: every MoE model of the run."""
    layers: tuple[int, ...] | None = None
    """MoE layers to analyse; None: all of them."""
    max_sequences: int = 64
    """Held-out sequences per domain."""
    batch_tokens: int = 2048
    """Tokens per forward pass (whole sequences, at least one)."""


# ---------------------------------------------------------------- pure statistics


def membership(topk_indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``[T, K]`` chosen experts -> ``[T, E]`` float64 0/1: expert e is in token t's top-k."""
    member = torch.zeros(topk_indices.shape[0], n_experts, dtype=torch.float64)
    return member.scatter_(1, topk_indices.long(), 1.0)


def expert_shares(topk_indices: torch.Tensor, n_experts: int) -> np.ndarray:
    """``[E]`` N_e / T: the share of tokens whose top-k includes each expert (sums to K)."""
    return membership(topk_indices, n_experts).mean(0).numpy()


def experts_for_coverage(shares: np.ndarray, coverage: float = 0.5) -> int:
    """The fewest experts (busiest first) holding ``coverage`` of all routing decisions."""
    decisions = np.sort(np.asarray(shares, dtype=np.float64))[::-1]
    cumulative = np.cumsum(decisions) / decisions.sum()
    return int(np.searchsorted(cumulative, coverage - 1e-12) + 1)


def normalised_entropy(shares: np.ndarray) -> float:
    """H(p) / log E of p = shares / Σ shares (1 for uniform routing, 0 for one expert)."""
    p = np.asarray(shares, dtype=np.float64)
    p = p / p.sum()
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum() / np.log(len(p)))


def coactivation(topk_indices: torch.Tensor, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``([E, E] P(j in top-k | i in top-k), [E, E] lift P(i, j) / (P(i) P(j)))``."""
    member = membership(topk_indices, n_experts)  # [T, E]
    joint = (member.T @ member / len(member)).numpy()  # [E, E] P(i and j)
    single = np.diag(joint).copy()  # [E] P(i)
    with np.errstate(invalid="ignore", divide="ignore"):
        conditional = joint / single[:, None]
        lift = joint / np.outer(single, single)
    return conditional, lift


def domain_statistics(shares: np.ndarray, top_k: int, tokens: int | None = None) -> dict[str, Any]:
    """The per-domain numbers of the summary from that domain's ``[E]`` shares (of ``tokens``)."""
    top = int(np.argmax(shares))
    return {
        "share": [float(s) for s in shares],
        "top_expert": top,
        "top_share": float(shares[top]),
        "experts_for_half": experts_for_coverage(shares),
        "entropy": normalised_entropy(shares),
        "share_sum": float(np.sum(shares)),
        "tokens": tokens,
    }


def layer_statistics(
    topk_indices: torch.Tensor, n_experts: int, domains: np.ndarray
) -> dict[str, Any]:
    """Every statistic of one layer from ``[T, K]`` choices and ``[T]`` domain labels."""
    top_k = topk_indices.shape[1]
    per_domain = {}
    names = sorted(set(domains.tolist()))
    for domain in [*names, ALL]:
        mask = domains == domain if domain != ALL else np.ones(len(domains), dtype=bool)
        stats = domain_statistics(
            expert_shares(topk_indices[torch.as_tensor(mask)], n_experts), top_k, int(mask.sum())
        )
        if domain != ALL:
            others = ~mask
            stats["top_share_elsewhere"] = (
                float(
                    expert_shares(topk_indices[torch.as_tensor(others)], n_experts)[
                        stats["top_expert"]
                    ]
                )
                if others.any()
                else None
            )
        per_domain[str(domain)] = stats
    conditional, lift = coactivation(topk_indices, n_experts)
    return {
        "n_experts": n_experts,
        "top_k": top_k,
        "uniform_share": top_k / n_experts,
        "uniform_experts_for_half": experts_for_coverage(np.full(n_experts, top_k / n_experts)),
        "domains": per_domain,
        "coactivation": _json_matrix(conditional),
        "coactivation_lift": _json_matrix(lift),
    }


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in matrix]


# ---------------------------------------------------------------- through the adapter


def collect_routing(
    adapter: ModelAdapter, batches: dict[str, list[torch.Tensor]], layers: list[int]
) -> tuple[dict[int, torch.Tensor], np.ndarray]:
    """``({layer: [T, K] topk_indices}, [T] domain labels)`` over every batch of every domain."""
    chosen: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    labels: list[np.ndarray] = []
    for domain, domain_batches_ in batches.items():
        for tokens in domain_batches_:
            for layer, routing in adapter.routing(tokens, layers).items():
                chosen[layer].append(routing.topk_indices.cpu())
            labels.append(np.full(tokens.numel(), domain))
    return {layer: torch.cat(parts) for layer, parts in chosen.items()}, np.concatenate(labels)


def model_routing(
    name: str,
    adapter: ModelAdapter,
    batches: dict[str, list[torch.Tensor]],
    layers: list[int] | None = None,
) -> dict[str, Any]:
    """The routing summary of one MoE model: tokens per domain and statistics per layer."""
    layers = check_layers(name, adapter, layers)
    chosen, labels = collect_routing(adapter, batches, layers)
    domains, counts = np.unique(labels, return_counts=True)
    return {
        "tokens": {str(d): int(c) for d, c in zip(domains, counts, strict=True)},
        "layers": {
            str(layer): layer_statistics(chosen[layer], adapter.n_experts(layer), labels)
            for layer in layers
        },
    }


class Routing:
    """Expert specialisation per domain, coverage, entropy and co-activation, per MoE layer."""

    def __init__(self, settings: RoutingSettings | None = None) -> None:
        self.settings = settings or RoutingSettings()

    def run(self, context: RunContext) -> AnalysisResult:
        """Route held-out tokens of each domain through every MoE model of the run."""
        settings = self.settings
        adapters = moe_adapters(run_model_paths(context), settings.models)
        batches = domain_batches(context, settings.max_sequences, settings.batch_tokens)
        layers = list(settings.layers) if settings.layers is not None else None
        alignments = run_alignments(context)
        models = {
            name: model_routing(name, a, model_batches(batches, alignments.get(name)), layers)
            for name, a in adapters.items()
        }
        figures = {f"routing_{name}": _heatmaps(name, summary) for name, summary in models.items()}
        return AnalysisResult({"settings": _settings(settings), "models": models}, figures)


def _settings(settings: RoutingSettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()}


def _heatmaps(name: str, summary: dict[str, Any]):
    """Domain × expert share heatmaps, one panel per layer, shares relative to uniform."""

    def draw(path: Path) -> None:
        layers = summary["layers"]
        figure = new_figure(3.2 * len(layers) + 1, 2.6)
        axes = figure.subplots(1, len(layers), squeeze=False)[0]
        image = None
        for ax, (layer, stats) in zip(axes, layers.items(), strict=True):
            domains = [d for d in stats["domains"] if d != ALL]
            ratio = np.array([stats["domains"][d]["share"] for d in domains])
            ratio = ratio / stats["uniform_share"]
            image = ax.imshow(ratio, aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(len(domains)), domains)
            ax.set_xlabel("expert")
            ax.set_title(f"{name} layer {layer}")
        if image is not None:
            figure.colorbar(image, ax=axes[-1], label="share / uniform k/E")
        save_figure(figure, path)

    return draw
