"""``feature_classes``: which latents are shared and which belong to one model only.

Convention: for models A and B (the crosscoder's first two, in config order),
r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖) from decoder norms in the crosscoder's normalised space (each
model's activations scaled to E‖x̃‖² = D: ``crossdiff.crosscoder.classes``); ``A_only`` if
r < 0.1, ``B_only`` if r > 0.9, ``shared`` in between. Designated shared latents (the tied block)
have r = 0.5 by construction; other shared latents are "emergent".

Latent scaling (after Minder et al. 2025): for each latent and model, β_i^m is the least-squares
scale of the unit decoder direction d̂_i^m that best explains, on held-out tokens where the latent
fires, what is left of model m's activation once the other latents are decoded:
β_i^m = Σ_t f_i(t)·⟨d̂_i^m, x_t^m − x̂_t^m + f_i(t)d_i^m⟩ / Σ_t f_i(t)². The scaled ratio
ν_i = β_i^B / (β_i^A + β_i^B) (β clamped at 0, both in the normalised space) says how the latent
would split if each decoder were free to take its best norm. An exclusive latent whose ν falls
in the shared band is flagged: its small decoder norm in the other model is an artefact of the
sparsity pressure, not absence.
(The models are trained separately, so a latent's direction in one model says nothing about the
other's basis: ν uses each model's own direction, unlike the base/chat setting of the paper.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.classes import (
    LatentScalingSums,
    class_table,
    latent_classes,
    relative_decoder_norm,
    site_classes,
)
from crossdiff.figures import new_figure, save_figure
from crossdiff.latents import iter_store_batches, scan_latents
from crossdiff_analyses._inputs import heldout_store, load_crosscoder

LOW, HIGH = 0.1, 0.9


class FeatureClasses:
    """Relative decoder norms, classes, shared-decoder cosines and latent scaling."""

    def run(self, context: RunContext) -> AnalysisResult:
        """Classify every latent and test exclusive ones with latent scaling."""
        crosscoder = load_crosscoder(context)
        store = heldout_store(context)
        fires_L = scan_latents(crosscoder, store, top_n=1).fires_L
        summary = classify(crosscoder, fires_L)
        beta_LM = latent_scaling(crosscoder, iter_store_batches(crosscoder, store))
        summary["latent_scaling"] = scaling_summary(crosscoder, beta_LM, fires_L)
        ratio = relative_decoder_norm(crosscoder)
        figures = {"decoder_norm_histogram": _histogram(ratio, crosscoder)}
        return AnalysisResult(summary, figures)


def classify(crosscoder: Crosscoder, fires_L: torch.Tensor) -> dict[str, Any]:
    """Class counts of the latents that fired on held-out tokens (``fires_L > 0``; the others
    are counted as dead), designated vs emergent shared latents, and decoder cosines."""
    classes = latent_classes(crosscoder, margin=LOW)
    alive = (fires_L > 0).tolist()
    names = list(crosscoder.cfg.models)
    n_shared = crosscoder.cfg.n_shared
    counts = {
        label: sum(c == label and a for c, a in zip(classes, alive, strict=True))
        for label in ["shared", *_only_labels(names)]
    }
    designated = classes[:n_shared]
    emergent = [i for i in range(n_shared, len(classes)) if classes[i] == "shared" and alive[i]]
    summary: dict[str, Any] = {
        "convention": f"r = |d_B| / (|d_A| + |d_B|) in the crosscoder's normalised space, "
        f"A = {names[0]}, B = {names[1]}; A_only if r < {LOW}, B_only if r > {HIGH}, "
        "shared otherwise",
        "counts": counts,
        "designated_shared": {"total": n_shared, "classified_shared": designated.count("shared")},
        "emergent_shared": len(emergent),
        "n_latents": len(classes),
        "dead": len(classes) - sum(alive),
    }
    if len(set(crosscoder.cfg.d_models[:2])) == 1 and emergent:
        cosines = decoder_cosines(crosscoder)[emergent]
        summary["emergent_shared_decoder_cosine"] = {
            "median": float(cosines.median()),
            "mean": float(cosines.mean()),
        }
    cfg = crosscoder.cfg
    if cfg.n_dedicated or len(cfg.models) > 2 or cfg.sites:  # the single-site pair: unchanged
        summary["subsets_by_origin"] = class_table(crosscoder, fires_L, margin=LOW)
    if cfg.sites:
        summary["subsets_by_site"] = {
            site: _count([c for c, a in zip(per_site, alive, strict=True) if a])
            for site, per_site in site_classes(crosscoder, margin=LOW).items()
        }
    return summary


def _count(labels: list[str]) -> dict[str, int]:
    return {label: labels.count(label) for label in sorted(set(labels))}


def decoder_cosines(crosscoder: Crosscoder) -> torch.Tensor:
    """``[L]`` cos(d_i^A, d_i^B) for the first two models (equal widths only)."""
    W_dec_LC = crosscoder.decoder_weights().detach()
    a, b = torch.split(W_dec_LC, list(crosscoder.cfg.widths), dim=1)[:2]
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@torch.no_grad()
def latent_scaling(crosscoder: Crosscoder, batches) -> torch.Tensor:
    """``[L, M]`` β_i^m in the normalised space (see the module docstring), from
    ``(activations, meta)`` batches."""
    sums = LatentScalingSums(crosscoder)
    for acts, _ in batches:
        f_BL = crosscoder.encode(acts)
        sums.add(acts, crosscoder.decode(f_BL), f_BL)
    return sums.beta()


def scaling_summary(
    crosscoder: Crosscoder, beta_LM: torch.Tensor, fires_L: torch.Tensor
) -> dict[str, Any]:
    """How many live exclusive latents latent scaling flags as explaining the other model too."""
    classes = latent_classes(crosscoder, margin=LOW)
    alive = fires_L > 0
    beta = beta_LM[:, :2].clamp_min(0)
    nu_L = beta[:, 1] / (beta[:, 0] + beta[:, 1]).clamp_min(1e-30)
    flagged = (nu_L >= LOW) & (nu_L <= HIGH)
    out: dict[str, Any] = {}
    for label in _only_labels(list(crosscoder.cfg.models)):
        members = torch.tensor([c == label for c in classes]) & alive
        out[label] = {
            "latents": int(members.sum()),
            "flagged_as_shared": int((members & flagged).sum()),
            "median_scaled_ratio": float(nu_L[members].median()) if members.any() else None,
        }
    return out


def _only_labels(names: list[str]) -> list[str]:
    from crossdiff.crosscoder.synthetic import only

    return [only(name) for name in names]


def _histogram(ratio: torch.Tensor, crosscoder: Crosscoder):
    def draw(path: Path) -> None:
        names = crosscoder.cfg.models
        n_shared = crosscoder.cfg.n_shared
        figure = new_figure(6, 3.5)
        axes = figure.subplots()
        bins = torch.linspace(0, 1, 41).tolist()
        axes.hist(ratio[n_shared:].tolist(), bins=bins, label="free latents", color="tab:blue")
        if n_shared:
            axes.hist(
                ratio[:n_shared].tolist(), bins=bins, label="designated shared", color="tab:orange"
            )
        for edge in (LOW, HIGH):
            axes.axvline(edge, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel(
            f"relative decoder norm  |d_{names[1]}| / (|d_{names[0]}| + |d_{names[1]}|)"
        )
        axes.set_ylabel("latents")
        axes.set_yscale("log")
        axes.legend()
        save_figure(figure, path)

    return draw
