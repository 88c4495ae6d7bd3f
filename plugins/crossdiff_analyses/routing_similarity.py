"""``routing_similarity``: does the similarity of two hidden states predict the experts they share?

Routers are linear maps of the router input x (the MoE block's input), so tokens with similar x
should choose similar top-k sets. Definitions (``S_t`` token t's K chosen experts of E):

- **overlap** of two tokens: |S_a ∩ S_b| / K (1: same experts; K/E expected by chance).
- **token level**, per MoE layer: for ``pairs`` token pairs drawn at random (seeded) within one
  domain and ``pairs`` across two domains, cos(x_a, x_b) against the overlap: the mean overlap in
  ``bins`` equal-width cosine bins over [-1, 1], Spearman's ρ, a least-squares line
  overlap ≈ a + b·cos, and a logistic fit overlap ≈ σ(a + b·cos) (binomial, K trials per pair).
  The same after **removing the mean direction**: x − (x·μ̂)μ̂ with μ̂ the unit mean of the
  layer's router inputs over every routed token.
- **sequence level**: cos of mean-pooled router inputs of two sequences against the overlap of
  their expert-usage distributions u_s[e] = (choices of e in s) / (K·P), measured as the
  histogram intersection Σ_e min(u_a[e], u_b[e]) (1 − total-variation distance; 1: identical use).
- **tests of ρ > 0**: pairs share tokens and tokens share sequences, so each ρ is tested with
  sequences as the independent units: a grouped jackknife over 10 random groups of sequences
  gives a standard error, ``spearman_p`` (one-sided, ρ > 0) and ``spearman_ci`` (95%)
  (:func:`spearman_test`).
- **collapse**: the token overlap across domains against a shuffled-routing baseline (each token's
  expert labels permuted at random, which destroys any preference shared by unrelated tokens;
  its expectation is K/E), their ratio, and the **mean-direction share** of the router inputs,
  Σ_t (x_t·μ̂)² / Σ_t ‖x_t‖² (1 when every x_t lies along one direction). Routing entropy is
  H(p)/log E of the expert-usage p over all tokens, as in ``routing``.
- **cross-model**, for every pair of MoE models (same tokens) and every pair of their MoE layers:
  experts matched one to one by the Hungarian method on the co-activation counts
  C[i, j] = #tokens with i ∈ S^A and j ∈ S^B (``scipy.optimize.linear_sum_assignment``), fitted
  on a random half of the sequences (seeded) and scored on the other half: the mean
  |π(S^A) ∩ S^B| / min(K_A, K_B) on the same input, beside the same without matching, the chance
  level K_A·K_B / (E_B·min(K_A, K_B)), and the matched overlap on DIFFERENT input (each token of A
  against a random token of another sequence in B), with a one-sided t-test over the scored
  sequences of same > different (the seed's comparison).
- **prompt vs continuation**: ``prompts`` held-out prompts of ``prompt_tokens`` tokens (chosen
  seeded; default half a sequence) are continued greedily by ``new_tokens`` tokens (default the
  other half) through the adapter's logits (every adapter has this generate path); the
  usage distribution of a prompt's tokens against that of its own continuation, of other
  prompts' continuations, and of other prompts (histogram intersection as above); per prompt,
  its ``advantages`` (own minus the mean over other continuations), and how many prompts are
  ``distinct_prompts``.

Models with another tokenizer than the corpus's are routed on their own token ids (the store's
recorded alignment, see ``_moe.run_alignments``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter
from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.errors import ConfigError
from crossdiff.figures import new_figure, save_figure
from crossdiff_analyses._moe import (
    check_layers,
    domain_batches,
    model_batches,
    moe_adapters,
    run_alignments,
    run_model_paths,
)
from crossdiff_analyses.routing import expert_shares, membership, normalised_entropy


@dataclass(frozen=True)
class SimilaritySettings:
    """Which models and layers, how many sequences, pairs, bins and prompts."""

    models: tuple[str, ...] | None = None
    """Models to analyse (each must be MoE); None: every MoE model of the run."""
    layers: tuple[int, ...] | None = None
    """MoE layers to analyse; None: all of them."""
    max_sequences: int = 24
    """Held-out sequences per domain."""
    batch_tokens: int = 2048
    """Tokens per forward pass (whole sequences, at least one)."""
    pairs: int = 20_000
    """Token pairs drawn within domains, and as many across domains, per layer."""
    bins: int = 20
    """Equal-width cosine bins over [-1, 1] for the curves."""
    prompts: int = 8
    """Prompts continued greedily (0: skip prompt vs continuation)."""
    prompt_tokens: int | None = None
    """Tokens per prompt (the first tokens of a held-out sequence); None: half its length."""
    new_tokens: int | None = None
    """Tokens generated per prompt; None: the rest of the sequence length, so that prompt and
    continuation fit the context the models were trained on."""
    seed: int = 0
    """Seed of the pair draws, the shuffled baseline and the choice of prompts."""

    def __post_init__(self) -> None:
        for name in ("max_sequences", "batch_tokens", "pairs", "bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.prompts, int) or self.prompts < 0:
            raise ConfigError(f"prompts must be a non-negative integer, got {self.prompts!r}")
        for name in ("prompt_tokens", "new_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")

    def prompt_lengths(self, sequence_length: int) -> tuple[int, int]:
        """``(prompt_tokens, new_tokens)`` for held-out sequences of ``sequence_length``."""
        prompt = self.prompt_tokens or max(1, sequence_length // 2)
        if prompt > sequence_length:
            raise ConfigError(
                f"prompt_tokens={prompt} is longer than the sequences ({sequence_length} tokens)"
            )
        return prompt, self.new_tokens or max(1, sequence_length - prompt)


# ---------------------------------------------------------------- pure statistics


def set_overlap(a_NK: torch.Tensor, b_NK: torch.Tensor) -> np.ndarray:
    """``[N, Ka]``, ``[N, Kb]`` expert sets -> ``[N]`` float64 |S_a ∩ S_b| / min(Ka, Kb)."""
    shared = (a_NK[:, :, None] == b_NK[:, None, :]).any(-1).sum(-1)
    return shared.double().numpy() / min(a_NK.shape[1], b_NK.shape[1])


def pair_cosines(x_TD: torch.Tensor, a_N: np.ndarray, b_N: np.ndarray) -> np.ndarray:
    """``[N]`` float64 cos(x[a], x[b]) (0 where a vector is 0)."""
    x = x_TD.double()
    xa, xb = x[torch.as_tensor(a_N)], x[torch.as_tensor(b_N)]
    norms = xa.norm(dim=-1) * xb.norm(dim=-1)
    return ((xa * xb).sum(-1) / norms.where(norms > 0, 1.0)).numpy()


def mean_direction(x_TD: torch.Tensor) -> torch.Tensor:
    """``[D]`` float64 unit vector along the mean of the rows (zeros if the mean is 0)."""
    mean = x_TD.double().mean(0)
    norm = mean.norm()
    return mean / norm if norm > 0 else mean


def remove_direction(x_TD: torch.Tensor, unit_D: torch.Tensor) -> torch.Tensor:
    """``[T, D]`` float64 rows with their component along ``unit_D`` removed."""
    x = x_TD.double()
    return x - (x @ unit_D)[:, None] * unit_D


def mean_direction_share(x_TD: torch.Tensor) -> float:
    """Σ_t (x_t·μ̂)² / Σ_t ‖x_t‖²: the share of the rows' second moment along their mean."""
    x = x_TD.double()
    total = float((x * x).sum())
    return float(((x @ mean_direction(x)) ** 2).sum()) / total if total > 0 else 0.0


def sample_pairs(
    labels: np.ndarray, n: int, rng: np.random.Generator, same: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random pairs (a ≠ b) of indices whose labels are equal (``same``) or differ;
    fewer (or none) when the labels hardly allow it."""
    labels = np.asarray(labels)
    a_parts, b_parts, found = [], [], 0
    for _ in range(20):
        if found >= n or len(labels) < 2:
            break
        a = rng.integers(0, len(labels), 4 * n)
        b = rng.integers(0, len(labels), 4 * n)
        keep = (a != b) & ((labels[a] == labels[b]) == same)
        a_parts.append(a[keep])
        b_parts.append(b[keep])
        found += int(keep.sum())
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a_parts)[:n], np.concatenate(b_parts)[:n]


def binned_curve(cos: np.ndarray, overlap: np.ndarray, bins: int) -> dict[str, list]:
    """Mean overlap per equal-width cosine bin over [-1, 1] (None for an empty bin)."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    index = np.clip(np.digitize(cos, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=overlap, minlength=bins)
    return {
        "edges": [float(e) for e in edges],
        "count": [int(c) for c in counts],
        "mean_overlap": [float(s / c) if c else None for s, c in zip(sums, counts, strict=True)],
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's ρ (None if either side is constant or there are fewer than 3 points)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Least squares y ≈ intercept + slope·x, with R²."""
    if len(x) < 2 or np.ptp(x) == 0:
        return {"intercept": None, "slope": None, "r2": None}
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float((residual**2).sum()) / total if total > 0 else None
    return {"intercept": float(intercept), "slope": float(slope), "r2": r2}


def logistic_fit(x: np.ndarray, y: np.ndarray, iterations: int = 50) -> dict[str, float | None]:
    """Binomial fit y ≈ σ(intercept + slope·x) of shares ``y`` in [0, 1] (Newton/IRLS)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"intercept": None, "slope": None}
    design = np.stack([np.ones_like(x), x], 1)
    beta = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(design @ beta)))
        w = np.clip(p * (1 - p), 1e-9, None)
        step = np.linalg.solve(design.T @ (design * w[:, None]) + 1e-9 * np.eye(2),
                               design.T @ (y - p))  # fmt: skip
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    return {"intercept": float(beta[0]), "slope": float(beta[1])}


JACKKNIFE_GROUPS = 10
"""Groups of sequences deleted in turn by :func:`spearman_test`."""


def spearman_test(
    x: np.ndarray,
    y: np.ndarray,
    unit_a: np.ndarray,
    unit_b: np.ndarray,
    rng: np.random.Generator,
    groups: int = JACKKNIFE_GROUPS,
) -> dict[str, Any]:
    """One-sided test of Spearman ρ > 0 over pairs whose two members belong to units (sequences).

    Pairs share tokens and tokens share sequences, so the pairs are not independent and the
    textbook test with n pairs would be far too confident. The units are dealt at random into
    ``groups`` groups; ρ is recomputed with each group's units (and every pair touching them)
    left out, and the grouped-jackknife standard error SE = √((G−1)/G · Σ_g (ρ_g − ρ̄)²) gives
    ``spearman_p`` = P(Z ≥ ρ/SE) and ``spearman_ci`` ρ ± 1.96·SE. Every value is None where ρ
    (or a leave-one-group-out ρ) is undefined, or with fewer than 3 units.
    """
    from scipy.stats import norm

    none = {"spearman_p": None, "spearman_ci": None, "units": 0}
    units = np.unique(np.concatenate([unit_a, unit_b]))
    rho = spearman(x, y)
    if rho is None or len(units) < 3:
        return {**none, "units": len(units)}
    g = min(groups, len(units))
    fold = dict(zip(units.tolist(), rng.permutation(len(units)) % g, strict=True))
    fold_a = np.array([fold[u] for u in unit_a.tolist()])
    fold_b = np.array([fold[u] for u in unit_b.tolist()])
    estimates = []
    for left_out in range(g):
        keep = (fold_a != left_out) & (fold_b != left_out)
        value = spearman(x[keep], y[keep])
        if value is None:
            return {**none, "units": len(units)}
        estimates.append(value)
    spread = np.asarray(estimates)
    se = float(np.sqrt((g - 1) / g * ((spread - spread.mean()) ** 2).sum()))
    if not se > 0:
        return {**none, "units": len(units)}
    return {
        "spearman_p": float(norm.sf(rho / se)),
        "spearman_ci": [rho - 1.96 * se, rho + 1.96 * se],
        "units": len(units),
    }


def relation(
    cos: np.ndarray,
    overlap: np.ndarray,
    bins: int,
    units: tuple[np.ndarray, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Every summary of cosine vs overlap for one set of pairs; with ``units`` (the sequence of
    each pair's two members), the one-sided test of ρ > 0 (:func:`spearman_test`)."""
    test: dict[str, Any] = {"spearman_p": None, "spearman_ci": None, "units": None}
    if units is not None:
        test = spearman_test(cos, overlap, *units, rng or np.random.default_rng(0))
    return {
        "pairs": len(cos),
        "mean_cosine": float(cos.mean()) if len(cos) else None,
        "mean_overlap": float(overlap.mean()) if len(cos) else None,
        "spearman": spearman(cos, overlap),
        **test,
        "linear": linear_fit(cos, overlap),
        "logistic": logistic_fit(cos, overlap),
        "curve": binned_curve(cos, overlap, bins),
    }


def token_level(
    x_TD: torch.Tensor,
    topk_TK: torch.Tensor,
    labels: np.ndarray,
    pairs: int,
    bins: int,
    rng: np.random.Generator,
    sequences: np.ndarray | None = None,
) -> dict[str, Any]:
    """Cosine vs overlap for token pairs within and across domains, raw and mean-removed;
    with ``[T]`` ``sequences``, ρ is tested with sequences as the independent units."""
    centred = remove_direction(x_TD, mean_direction(x_TD))
    out: dict[str, Any] = {}
    for kind, same in (("within", True), ("across", False)):
        a, b = sample_pairs(labels, pairs, rng, same)
        overlap = set_overlap(topk_TK[a], topk_TK[b])
        units = None if sequences is None else (sequences[a], sequences[b])
        out[kind] = relation(pair_cosines(x_TD, a, b), overlap, bins, units, rng)
        out[f"{kind}_mean_removed"] = relation(
            pair_cosines(centred, a, b), overlap, bins, units, rng
        )
    return out


def usage(topk_TK: torch.Tensor, groups: np.ndarray, n_experts: int) -> np.ndarray:
    """``[G, E]`` each group's expert-usage distribution (its tokens' choices, summing to 1)."""
    member = membership(topk_TK, n_experts).numpy()  # [T, E]
    groups = np.asarray(groups)
    counts = np.zeros((int(groups.max()) + 1, n_experts))
    np.add.at(counts, groups, member)
    return counts / counts.sum(1, keepdims=True).clip(min=1)


def intersection(u_AE: np.ndarray, v_BE: np.ndarray) -> np.ndarray:
    """``[A, B]`` Σ_e min(u_a[e], v_b[e]) of usage distributions (1: identical)."""
    return np.minimum(u_AE[:, None, :], v_BE[None, :, :]).sum(-1)


def sequence_level(
    x_TD: torch.Tensor,
    topk_TK: torch.Tensor,
    sequences: np.ndarray,
    sequence_labels: np.ndarray,
    n_experts: int,
    bins: int,
) -> dict[str, Any]:
    """Cosine of mean-pooled router inputs vs usage intersection over every sequence pair."""
    sequences = np.asarray(sequences)
    n = int(sequences.max()) + 1
    pooled = torch.zeros(n, x_TD.shape[1], dtype=torch.float64)
    pooled.index_add_(0, torch.as_tensor(sequences), x_TD.double())
    pooled /= torch.as_tensor(np.bincount(sequences, minlength=n)).clamp(min=1)[:, None]
    u = usage(topk_TK, sequences, n_experts)
    a, b = np.triu_indices(n, 1)
    cos = pair_cosines(pooled, a, b)
    overlap = intersection(u, u)[a, b]
    labels = np.asarray(sequence_labels)
    same = labels[a] == labels[b]
    rng = np.random.default_rng(0)
    return {
        "measure": "histogram intersection of expert-usage distributions",
        "sequences": n,
        "all": relation(cos, overlap, bins, (a, b), rng),
        "within": relation(cos[same], overlap[same], bins, (a[same], b[same]), rng),
        "across": relation(cos[~same], overlap[~same], bins, (a[~same], b[~same]), rng),
    }


def shuffled_overlap(
    topk_TK: torch.Tensor, a: np.ndarray, b: np.ndarray, n_experts: int, rng: np.random.Generator
) -> float:
    """Mean overlap of the pairs after relabelling each token's experts by a random permutation."""
    if len(a) == 0:
        return float("nan")
    perms = torch.as_tensor(rng.permuted(np.tile(np.arange(n_experts), (len(a), 1)), axis=1))
    shuffled = perms.gather(1, topk_TK[torch.as_tensor(a)].long())
    return float(set_overlap(shuffled, topk_TK[torch.as_tensor(b)]).mean())


def collapse(
    x_TD: torch.Tensor,
    topk_TK: torch.Tensor,
    labels: np.ndarray,
    n_experts: int,
    pairs: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Cross-domain overlap vs the shuffled-routing baseline, mean-direction share, entropy."""
    a, b = sample_pairs(labels, pairs, rng, same=False)
    observed = float(set_overlap(topk_TK[a], topk_TK[b]).mean()) if len(a) else None
    baseline = shuffled_overlap(topk_TK, a, b, n_experts, rng)
    k = topk_TK.shape[1]
    return {
        "cross_domain_overlap": observed,
        "shuffled_baseline": None if math.isnan(baseline) else baseline,
        "uniform_baseline": k / n_experts,
        "ratio": observed / baseline if observed is not None and baseline > 0 else None,
        "mean_direction_share": mean_direction_share(x_TD),
        "entropy": normalised_entropy(expert_shares(topk_TK, n_experts)),
    }


def match_experts(
    a_NK: torch.Tensor, b_NK: torch.Tensor, e_a: int, e_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(π [E_a] expert of B matched to each expert of A (-1: none), C [E_a, E_b])``: the
    one-to-one matching maximising the co-activation counts C (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    counts = (membership(a_NK, e_a).T @ membership(b_NK, e_b)).numpy()  # [E_a, E_b]
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(e_a, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping, counts


def matched_overlap(a_NK: torch.Tensor, b_NK: torch.Tensor, mapping: np.ndarray) -> float:
    """Mean |π(S_a) ∩ S_b| / min(Ka, Kb) with A's experts renamed by ``mapping``."""
    renamed = torch.as_tensor(mapping)[a_NK.long()]
    return float(set_overlap(renamed, b_NK).mean())


def cross_model(
    a_NK: torch.Tensor,
    b_NK: torch.Tensor,
    e_a: int,
    e_b: int,
    groups: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Matching fitted on a random half of the units (``groups``: each token's sequence; each
    token its own unit if None), overlap scored on the other half, on the same input and on
    different input, with a one-sided t-test over the scored units of same > different."""
    from scipy.stats import t as student

    rng = rng or np.random.default_rng(0)
    groups = np.arange(len(a_NK)) if groups is None else np.asarray(groups)
    units = np.unique(groups)
    if len(units) < 2:
        raise ConfigError("cross-model matching needs at least two sequences (or tokens)")
    fit_units = rng.permutation(units)[: len(units) // 2]
    fit = np.isin(groups, fit_units)
    fit_t, score_t = torch.as_tensor(fit), torch.as_tensor(~fit)
    mapping, _ = match_experts(a_NK[fit_t], b_NK[fit_t], e_a, e_b)
    k = min(a_NK.shape[1], b_NK.shape[1])
    identity = np.where(np.arange(e_a) < e_b, np.arange(e_a), -1)  # no renaming
    a_s, b_s, scored_groups = a_NK[score_t], b_NK[score_t], groups[~fit]
    renamed = torch.as_tensor(mapping)[a_s.long()]
    same = set_overlap(renamed, b_s)  # [N] per scored token
    other = different_input_partners(scored_groups, rng)
    different = set_overlap(renamed, b_s[torch.as_tensor(other)])
    scored_units, index = np.unique(scored_groups, return_inverse=True)
    per_unit = np.bincount(index, weights=same - different) / np.bincount(index)
    p = None
    if len(per_unit) >= 2 and per_unit.std(ddof=1) > 0:
        t_stat = per_unit.mean() / (per_unit.std(ddof=1) / np.sqrt(len(per_unit)))
        p = float(student.sf(t_stat, len(per_unit) - 1))
    return {
        "matched_overlap": float(same.mean()),
        "unmatched_overlap": matched_overlap(a_s, b_s, identity),
        "different_input_overlap": float(different.mean()),
        "same_vs_different_p": p,
        "chance": a_NK.shape[1] * b_NK.shape[1] / (e_b * k),
        "matching": [int(v) for v in mapping],
        "fit_tokens": int(fit.sum()),
        "scored_tokens": int((~fit).sum()),
        "sequences": len(scored_units),
    }


def different_input_partners(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N]`` for each token a random token of ANOTHER unit (of itself if there is none)."""
    n = len(groups)
    partner = rng.integers(0, n, n)
    for _ in range(50):
        clash = groups[partner] == groups
        if not clash.any() or len(np.unique(groups)) < 2:
            break
        partner[clash] = rng.integers(0, n, int(clash.sum()))
    return partner


# ---------------------------------------------------------------- through the adapter


@dataclass
class Routed:
    """One model's routing of the held-out tokens at its analysed layers."""

    x: dict[int, torch.Tensor]
    """Layer -> ``[T, D]`` router inputs."""
    topk: dict[int, torch.Tensor]
    """Layer -> ``[T, K]`` chosen experts."""
    labels: np.ndarray
    """``[T]`` domain of each token."""
    sequences: np.ndarray
    """``[T]`` sequence number of each token (0..S-1)."""
    sequence_labels: np.ndarray
    """``[S]`` domain of each sequence."""


def route(
    adapter: ModelAdapter, batches: dict[str, list[torch.Tensor]], layers: Sequence[int]
) -> Routed:
    """Route every batch of every domain; keep router inputs and chosen experts per layer."""
    xs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    topk: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    labels, sequences, sequence_labels = [], [], []
    for domain, domain_batches_ in batches.items():
        for tokens in domain_batches_:
            for layer, routing in adapter.routing(tokens, layers).items():
                if routing.router_input is None:
                    raise ConfigError(
                        f"{type(adapter).__name__} gives no router input (Routing.router_input); "
                        "routing_similarity needs it"
                    )
                xs[layer].append(routing.router_input.detach().float().cpu())
                topk[layer].append(routing.topk_indices.cpu())
            B, P = tokens.shape
            first = len(sequence_labels)
            sequences.append(np.repeat(np.arange(first, first + B), P))
            sequence_labels.extend([domain] * B)
            labels.append(np.full(B * P, domain))
    return Routed(
        {layer: torch.cat(v) for layer, v in xs.items()},
        {layer: torch.cat(v) for layer, v in topk.items()},
        np.concatenate(labels),
        np.concatenate(sequences),
        np.array(sequence_labels),
    )


def greedy_continuation(adapter: ModelAdapter, prompts: torch.Tensor, n_new: int) -> torch.Tensor:
    """``prompts [B, P]`` -> ``[B, P + n_new]``, each new token the argmax of the logits."""
    tokens = prompts
    for _ in range(n_new):
        following = adapter.logits(tokens)[:, -1].argmax(-1).to(tokens.device)  # [B]
        tokens = torch.cat([tokens, following[:, None].to(tokens.dtype)], 1)
    return tokens


def prompt_continuation(
    adapter: ModelAdapter, prompts: torch.Tensor, n_new: int, layers: Sequence[int]
) -> dict[str, Any]:
    """Per layer: usage intersection of each prompt with its own continuation vs with others'."""
    full = greedy_continuation(adapter, prompts, n_new)
    B, P = prompts.shape
    position = np.tile(np.arange(full.shape[1]), B)
    row = np.repeat(np.arange(B), full.shape[1])
    out: dict[str, Any] = {}
    for layer, routing in adapter.routing(full.cpu(), layers).items():
        chosen = routing.topk_indices.cpu()
        e = adapter.n_experts(layer)
        groups = row * 2 + (position >= P)  # 2b: prompt b, 2b+1: its continuation
        u = usage(chosen, groups, e)
        prompt_u, cont_u = u[0::2], u[1::2]
        cross = intersection(prompt_u, cont_u)  # [B, B]
        between = intersection(prompt_u, prompt_u)
        off = ~np.eye(B, dtype=bool)
        own = float(np.diag(cross).mean())
        others = float(cross[off].mean()) if B > 1 else None
        per_prompt = np.diag(cross) - np.where(off, cross, 0).sum(1) / (B - 1) if B > 1 else None
        out[str(layer)] = {
            "own_continuation": own,
            "other_continuations": others,
            "other_prompts": float(between[off].mean()) if B > 1 else None,
            "advantage": None if others is None else own - others,
            "advantages": None if per_prompt is None else [float(v) for v in per_prompt],
        }
    return out


def model_similarity(
    name: str,
    adapter: ModelAdapter,
    batches: dict[str, list[torch.Tensor]],
    settings: SimilaritySettings | None = None,
) -> tuple[dict[str, Any], Routed]:
    """The summary of one MoE model (every section but cross-model) and its routed tokens."""
    settings = settings or SimilaritySettings()
    layers = check_layers(name, adapter, settings.layers)
    routed = route(adapter, batches, layers)
    rng = np.random.default_rng(settings.seed)
    out: dict[str, Any] = {"tokens": len(routed.labels), "layers": {}}
    for layer in layers:
        x, topk, e = routed.x[layer], routed.topk[layer], adapter.n_experts(layer)
        out["layers"][str(layer)] = {
            "n_experts": e,
            "top_k": adapter.top_k(layer),
            "token": token_level(
                x, topk, routed.labels, settings.pairs, settings.bins, rng, routed.sequences
            ),
            "sequence": sequence_level(
                x, topk, routed.sequences, routed.sequence_labels, e, settings.bins
            ),
            "collapse": collapse(x, topk, routed.labels, e, settings.pairs, rng),
        }
    if settings.prompts:
        prompts, new_tokens = choose_prompts(batches, settings)
        out["prompt_continuation"] = {
            "prompts": len(prompts),
            "distinct_prompts": len({tuple(row.tolist()) for row in prompts}),
            "prompt_tokens": prompts.shape[1],
            "new_tokens": new_tokens,
            "layers": prompt_continuation(adapter, prompts, new_tokens, layers),
        }
    return out, routed


def choose_prompts(
    batches: dict[str, list[torch.Tensor]], settings: SimilaritySettings
) -> tuple[torch.Tensor, int]:
    """``([N, prompt_tokens] prompts, new_tokens)``: the first tokens of held-out sequences,
    chosen seeded."""
    rows = torch.cat([t for domain in batches.values() for t in domain])
    prompt_tokens, new_tokens = settings.prompt_lengths(rows.shape[1])
    rng = np.random.default_rng(settings.seed)
    chosen = rng.choice(len(rows), min(settings.prompts, len(rows)), replace=False)
    return rows[torch.as_tensor(np.sort(chosen)), :prompt_tokens], new_tokens


def models_cross(
    routed: dict[str, Routed], adapters: dict[str, ModelAdapter], seed: int = 0
) -> dict[str, Any]:
    """``"A|B"`` -> ``"la|lb"`` -> :func:`cross_model` (sequences as units, a seeded random
    split), for every pair of models and layers."""
    out: dict[str, Any] = {}
    for a, b in itertools.combinations(sorted(routed), 2):
        pairs = {}
        for la, lb in itertools.product(routed[a].topk, routed[b].topk):
            ta, tb = routed[a].topk[la], routed[b].topk[lb]
            if len(ta) != len(tb):
                raise ConfigError(f"models {a!r} and {b!r} were routed on different tokens")
            pairs[f"{la}|{lb}"] = cross_model(
                ta,
                tb,
                adapters[a].n_experts(la),
                adapters[b].n_experts(lb),
                routed[a].sequences,
                np.random.default_rng(seed),
            )
        out[f"{a}|{b}"] = pairs
    return out


class RoutingSimilarity:
    """Hidden-state similarity vs shared experts: tokens, sequences, collapse, models, prompts."""

    def __init__(self, settings: SimilaritySettings | None = None) -> None:
        self.settings = settings or SimilaritySettings()

    def run(self, context: RunContext) -> AnalysisResult:
        """Route held-out tokens of each domain through every MoE model of the run."""
        settings = self.settings
        adapters = moe_adapters(run_model_paths(context), settings.models)
        batches = domain_batches(context, settings.max_sequences, settings.batch_tokens)
        alignments = run_alignments(context)
        models, routed = {}, {}
        for name, adapter in adapters.items():
            own = model_batches(batches, alignments.get(name))
            models[name], routed[name] = model_similarity(name, adapter, own, settings)
        cross = models_cross(routed, adapters, settings.seed)
        figures = {}
        for name, summary in models.items():
            figures[f"similarity_overlap_{name}"] = _curves(name, summary)
            figures[f"collapse_{name}"] = _collapse(name, summary)
        if cross:
            figures["cross_model"] = _cross(cross)
        result = {"settings": _settings(settings), "models": models, "cross_model": cross}
        return AnalysisResult(result, figures)


def _settings(settings: SimilaritySettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()}


# ---------------------------------------------------------------- figures


def _centres(curve: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
    edges = np.array(curve["edges"])
    centres = (edges[1:] + edges[:-1]) / 2
    values = np.array([np.nan if v is None else v for v in curve["mean_overlap"]])
    return centres, values


def _curves(name: str, summary: dict[str, Any]):
    """Mean overlap against cosine, one panel per layer: within/across, raw and mean-removed."""

    def draw(path: Path) -> None:
        layers = summary["layers"]
        figure = new_figure(3.0 * len(layers) + 0.5, 2.8)
        axes = figure.subplots(1, len(layers), squeeze=False)[0]
        for ax, (layer, stats) in zip(axes, layers.items(), strict=True):
            for key, style in (("within", "-"), ("across", "--"), ("within_mean_removed", ":")):
                x, y = _centres(stats["token"][key]["curve"])
                ax.plot(x, y, style, marker=".", label=key.replace("_", " "))
            ax.axhline(stats["top_k"] / stats["n_experts"], color="grey", lw=0.8)
            ax.set_xlabel("cos(router inputs)")
            ax.set_title(f"{name} layer {layer}", fontsize=9)
            ax.set_ylim(0, 1.02)
        axes[0].set_ylabel("|S_a ∩ S_b| / k")
        axes[0].legend(fontsize=6)
        save_figure(figure, path)

    return draw


def _collapse(name: str, summary: dict[str, Any]):
    """Per layer: cross-domain overlap vs shuffled baseline, and the mean-direction share."""

    def draw(path: Path) -> None:
        layers = list(summary["layers"])
        stats = [summary["layers"][layer]["collapse"] for layer in layers]
        figure = new_figure(4.5, 2.8)
        ax = figure.subplots()
        x = [int(layer) for layer in layers]
        ax.plot(x, [s["cross_domain_overlap"] for s in stats], marker="o", label="across domains")
        ax.plot(x, [s["shuffled_baseline"] for s in stats], "--", label="shuffled routing")
        ax.plot(x, [s["mean_direction_share"] for s in stats], ":", marker="s",
                label="mean-direction share")  # fmt: skip
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: deep-layer collapse", fontsize=9)
        ax.legend(fontsize=7)
        save_figure(figure, path)

    return draw


def _cross(cross: dict[str, Any]):
    """Matched overlap per layer pair, one panel per model pair."""

    def draw(path: Path) -> None:
        figure = new_figure(3.2 * len(cross) + 0.8, 2.8)
        axes = figure.subplots(1, len(cross), squeeze=False)[0]
        image = None
        for ax, (pair, layers) in zip(axes, cross.items(), strict=True):
            la = sorted({int(k.split("|")[0]) for k in layers})
            lb = sorted({int(k.split("|")[1]) for k in layers})
            grid = np.array([[layers[f"{i}|{j}"]["matched_overlap"] for j in lb] for i in la])
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(lb)), lb)
            ax.set_yticks(range(len(la)), la)
            a, b = pair.split("|")
            ax.set_xlabel(f"{b} layer")
            ax.set_ylabel(f"{a} layer")
            ax.set_title("matched overlap", fontsize=9)
        if image is not None:
            figure.colorbar(image, ax=axes[-1])
        save_figure(figure, path)

    return draw
