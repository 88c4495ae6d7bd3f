"""``expert_alignment``: which experts go with each crosscoder latent at the crosscoded MoE layer.

For each MoE model of the crosscoder, at the layer L of its store site (e.g. ``2.mlp_out`` -> 2),
over the held-out tokens (T of them; K experts chosen per token out of E):

- base rate P(e) = N_e / T, the share of tokens whose top-k at L holds expert e;
- P(e | l) = P(e ∈ top-k | latent l active); its **lift** P(e | l) / P(e) (1 = no relation;
  at most 1/P(e));
- **entropy** of latent l's expert distribution q_e = P(e | l) / K (Σ_e q_e = 1), divided by
  log E: 1 when the latent's tokens are routed like all tokens' uniformly, 0 for one expert;
- a latent is **expert-specific** when it fired on at least ``min_fires`` held-out tokens and
  for some expert e both P(e | l) ≥ ``specificity`` (default 0.9: nine in ten of its tokens go
  to e) and lift ≥ ``min_lift`` (default 1.5: e is chosen 1.5× as often as on average); that e
  (the one with the largest lift if several) **owns** the latent. Both conditions are needed: a
  busy expert is in most top-k sets anyway (high P(e | l), lift ≈ 1), and a rare one can have a
  high lift on a handful of a latent's tokens.
- per latent class (``shared``, ``<model>_only``): live latents (≥ ``min_fires``), how many are
  expert-specific, and that share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter
from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.synthetic import SHARED, only
from crossdiff.errors import ConfigError
from crossdiff.figures import new_figure, save_figure
from crossdiff.latents import iter_store_batches
from crossdiff.store import StoreInfo
from crossdiff_analyses._inputs import heldout_store, load_crosscoder
from crossdiff_analyses._moe import check_layers, moe_adapters, run_alignments, run_model_paths
from crossdiff_analyses.routing import membership


@dataclass(frozen=True)
class AlignmentSettings:
    """Thresholds of expert specificity and how much to show."""

    min_fires: int = 20
    """A latent must fire on this many held-out tokens to be judged."""
    specificity: float = 0.9
    """Least P(e in top-k | latent active) of the owning expert."""
    min_lift: float = 1.5
    """Least lift P(e | latent) / P(e) of the owning expert."""
    top_latents: int = 30
    """Latents (largest lift first) listed in the summary and drawn in the lift matrix."""
    batch_sequences: int = 16
    """Sequences per routing forward pass."""


@dataclass
class AlignmentCounts:
    """Tallies over held-out tokens (float64)."""

    tokens: int
    """T tokens seen."""
    expert_tokens_E: torch.Tensor
    """``[E]`` N_e: tokens whose top-k holds e."""
    fires_L: torch.Tensor
    """``[L]`` tokens on which each latent was active."""
    joint_LE: torch.Tensor
    """``[L, E]`` tokens on which latent l was active AND e was in the top-k."""


def tally(
    active_TL: torch.Tensor, topk_indices_TK: torch.Tensor, n_experts: int
) -> AlignmentCounts:
    """Counts of one batch: ``active [T, L]`` (bool) and ``topk_indices [T, K]``."""
    member_TE = membership(topk_indices_TK, n_experts)
    active = active_TL.double()
    return AlignmentCounts(len(active), member_TE.sum(0), active.sum(0), active.T @ member_TE)


def merge(a: AlignmentCounts | None, b: AlignmentCounts) -> AlignmentCounts:
    """Sum of two tallies."""
    if a is None:
        return b
    return AlignmentCounts(
        a.tokens + b.tokens,
        a.expert_tokens_E + b.expert_tokens_E,
        a.fires_L + b.fires_L,
        a.joint_LE + b.joint_LE,
    )


def lift_and_entropy(
    counts: AlignmentCounts, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``([L, E] P(e|l), [L, E] lift, [L] normalised entropy)``; NaN for latents never active."""
    conditional = counts.joint_LE / counts.fires_L[:, None]  # NaN where fires = 0
    base = counts.expert_tokens_E / counts.tokens  # [E]
    lift = conditional / base.where(base > 0, torch.nan)
    q = conditional / top_k
    plogp = torch.where(q > 0, q * q.log(), torch.zeros_like(q))
    entropy = -plogp.sum(-1) / np.log(counts.joint_LE.shape[1])
    entropy[counts.fires_L == 0] = torch.nan
    return conditional, lift, entropy


def owners(
    conditional: torch.Tensor, lift: torch.Tensor, fires: torch.Tensor, settings: AlignmentSettings
) -> torch.Tensor:
    """``[L]`` the owning expert of each expert-specific latent, -1 for the others."""
    ok = (conditional >= settings.specificity) & (lift >= settings.min_lift)
    ok &= (fires >= settings.min_fires)[:, None]
    best = torch.where(ok, lift, torch.full_like(lift, -torch.inf)).argmax(-1)
    return torch.where(ok.any(-1), best, torch.full_like(best, -1))


def alignment_summary(
    counts: AlignmentCounts,
    top_k: int,
    classes: list[str],
    settings: AlignmentSettings,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Base rates, owned latents per expert, specificity per class and the top latents.

    ``labels``: the classes to report (each appears, with ``share`` None if it has no live
    latent); by default those that occur.
    """
    conditional, lift, entropy = lift_and_entropy(counts, top_k)
    owner = owners(conditional, lift, counts.fires_L, settings)
    n_experts = counts.joint_LE.shape[1]
    live = counts.fires_L >= settings.min_fires
    of_latent = np.asarray(classes)
    per_class = {}
    for label in labels or sorted(set(classes)):
        mask = torch.as_tensor(of_latent == label) & live
        specific = int((owner[mask] >= 0).sum())
        per_class[label] = {
            "live": int(mask.sum()),
            "specific": specific,
            "share": specific / int(mask.sum()) if mask.any() else None,
            "median_entropy": float(entropy[mask].median()) if mask.any() else None,
        }
    max_lift = torch.where(live[:, None], lift.nan_to_num(-1.0), -1.0).amax(-1)  # [L]
    order = [int(i) for i in max_lift.argsort(descending=True) if live[i]][: settings.top_latents]
    return {
        "tokens": counts.tokens,
        "n_experts": n_experts,
        "top_k": top_k,
        "expert_share": (counts.expert_tokens_E / counts.tokens).tolist(),
        "live_latents": int(live.sum()),
        "owned": torch.bincount(owner[owner >= 0], minlength=n_experts).tolist(),
        "expert_specific": per_class,
        "top_latents": [
            {
                "latent": i,
                "class": classes[i],
                "fires": int(counts.fires_L[i]),
                "owner": int(owner[i]),
                "max_lift": float(max_lift[i]),
                "entropy": float(entropy[i]),
                "lift": [float(v) if torch.isfinite(v) else None for v in lift[i]],
            }
            for i in order
        ],
    }


# ---------------------------------------------------------------- over a store


def store_routing(
    adapter: ModelAdapter, input_ids: np.ndarray, sequences: torch.Tensor, layer: int, batch: int
) -> dict[int, torch.Tensor]:
    """Corpus row -> ``[P, K]`` chosen experts at ``layer``, for every row in ``sequences``."""
    rows = sorted(set(sequences.tolist()))
    routed: dict[int, torch.Tensor] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        tokens = torch.as_tensor(input_ids[chunk]).long()  # [B, P]
        chosen = adapter.routing(tokens, [layer])[layer].topk_indices.cpu()  # [B·P, K]
        for row, per_position in zip(chunk, chosen.reshape(len(chunk), tokens.shape[1], -1),
                                     strict=True):  # fmt: skip
            routed[row] = per_position
    return routed


@torch.no_grad()
def align_store(
    crosscoder: Crosscoder,
    store: StoreInfo,
    adapter: ModelAdapter,
    input_ids: np.ndarray,
    layer: int,
    batch_sequences: int = 16,
) -> AlignmentCounts:
    """Tally latent activity against the routing at ``layer`` over every row of ``store``."""
    counts: AlignmentCounts | None = None
    routed: dict[int, torch.Tensor] = {}
    n_experts = adapter.n_experts(layer)
    for acts, meta in iter_store_batches(crosscoder, store):
        missing = sorted(set(meta["sequences"].tolist()) - set(routed))
        if missing:
            routed.update(
                store_routing(adapter, input_ids, torch.tensor(missing), layer, batch_sequences)
            )
        chosen = torch.stack(
            [
                routed[int(s)][int(p)]
                for s, p in zip(meta["sequences"], meta["positions"], strict=True)
            ]
        )  # [B, K]
        active = crosscoder.encode(acts) > 0  # [B, L]
        counts = merge(counts, tally(active, chosen, n_experts))
    if counts is None:
        raise ConfigError(f"the store at {str(store.path)!r} holds no rows")
    return counts


class ExpertAlignment:
    """Per latent: lift of each expert at the crosscoded MoE layer, entropy, ownership."""

    def __init__(self, settings: AlignmentSettings | None = None) -> None:
        self.settings = settings or AlignmentSettings()

    def run(self, context: RunContext) -> AnalysisResult:
        """Route the held-out store's tokens and tally them against the latents."""
        from crossdiff.corpus import load_sequences

        settings = self.settings
        crosscoder = load_crosscoder(context)
        store = heldout_store(context)
        paths = run_model_paths(context)
        adapters = moe_adapters({m: paths[m] for m in crosscoder.cfg.models if m in paths})
        split = store.manifest["config"]["store"]["split"]
        input_ids = load_sequences(context.stage_dir("corpus"))[split].input_ids
        classes = latent_classes(crosscoder)
        alignments = run_alignments(context)
        models, figures = {}, {}
        for name, adapter in adapters.items():
            # several sites per model: one entry per MoE layer, keyed model/site
            for site in crosscoder.cfg.sites or [store.sites[name][0]]:
                key = f"{name}/{site}" if crosscoder.cfg.sites else name
                layer = adapter.site(site).layer
                check_layers(name, adapter, [layer])
                own_ids = alignments[name][input_ids] if name in alignments else input_ids
                counts = align_store(
                    crosscoder, store, adapter, own_ids, layer, settings.batch_sequences
                )
                labels = [SHARED, *(only(m) for m in crosscoder.cfg.models)]
                summary = alignment_summary(counts, adapter.top_k(layer), classes, settings, labels)
                models[key] = {"site": site, "layer": layer, **summary}
                figures[f"lift_matrix_{key.replace('/', '_')}"] = _lift_matrix(key, models[key])
        thresholds = {k: v for k, v in vars(settings).items() if k != "batch_sequences"}
        return AnalysisResult({"settings": thresholds, "models": models}, figures)


def _lift_matrix(name: str, summary: dict[str, Any]):
    """log2 lift of the top latents (rows) × experts (columns)."""

    def draw(path: Path) -> None:
        rows = summary["top_latents"]
        figure = new_figure(2 + 0.35 * summary["n_experts"], 1.5 + 0.18 * max(len(rows), 1))
        ax = figure.subplots()
        if rows:
            lifts = np.array([[np.nan if v is None else v for v in r["lift"]] for r in rows])
            matrix = np.log2(np.clip(lifts, 1e-3, None))  # [latents, E]; NaN: expert unused
            image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3)
            labels = [f"{r['latent']} {r['class']}" for r in rows]
            ax.set_yticks(range(len(rows)), labels, fontsize=6)
            figure.colorbar(image, ax=ax, label="log2 lift P(e|latent)/P(e)")
        ax.set_xlabel("expert")
        ax.set_title(f"{name} layer {summary['layer']}: top latents by lift", fontsize=9)
        save_figure(figure, path)

    return draw
