"""Score a crosscoder against planted features: recovery, class, density (see synthetic.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdiff.crosscoder.classes import latent_subsets
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.synthetic import SHARED, PlantedFeatures

RECOVERED_COSINE = 0.9
"""A planted feature counts as recovered by a latent whose decoder cosine reaches this."""


@dataclass
class FeatureMatch:
    """The latent that best matches one planted feature."""

    feature: int
    planted_class: str
    latent: int
    """Latent with the highest cosine (the minimum over the models the feature lives in)."""
    cosine: float
    latent_class: str
    """Model-subset class from decoder norms (``classes.latent_subsets``; for two models the
    relative-norm convention)."""
    planted_density: float
    density: float
    """Firing frequency of the latent on held-out samples, with the inference threshold."""


@torch.no_grad()
def match_planted(
    model: Crosscoder, planted: PlantedFeatures, n_tokens: int = 20_000, seed: int = 12345
) -> list[FeatureMatch]:
    """For every planted feature, its best latent by decoder cosine in each model's own units."""
    density_L = latent_densities(model, planted, n_tokens, seed)
    cos_MLF = decoder_cosines(model, planted)
    classes = latent_subsets(model)
    matches = []
    for f in range(planted.n_features):
        lives = [m for m, name in enumerate(model.cfg.models) if name in planted.members[f]]
        score_L = cos_MLF[lives, :, f].min(dim=0).values
        i = int(score_L.argmax())
        matches.append(
            FeatureMatch(
                f,
                planted.classes[f],
                i,
                float(score_L[i]),
                classes[i],
                float(planted.densities[f]),
                float(density_L[i]),
            )
        )
    return matches


@torch.no_grad()
def latent_densities(
    model: Crosscoder, planted: PlantedFeatures, n_tokens: int = 20_000, seed: int = 12345
) -> torch.Tensor:
    """``[L]`` firing frequency of every latent (inference threshold) on fresh samples."""
    batch, _ = planted.sample(n_tokens, torch.Generator().manual_seed(seed))
    return (model.encode(batch) > 0).double().mean(dim=0).cpu()


@torch.no_grad()
def decoder_cosines(model: Crosscoder, planted: PlantedFeatures) -> torch.Tensor:
    """``[M, L, F]`` cos(d_i^m, u_f^m) in model m's own units (0 where f is absent from m)."""
    W_dec_LC = model.decoder_weights().detach().double().cpu()
    parts = torch.split(W_dec_LC, list(model.cfg.widths), dim=1)
    out = []
    for m, name in enumerate(model.cfg.models):
        d_LD = parts[m] / model.input_scale_M[m].double().cpu()
        d_LD = d_LD / d_LD.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out.append(d_LD @ planted.directions[name].T)  # directions are unit or zero rows
    return torch.stack(out)


@dataclass
class ClassScores:
    """How well a crosscoder's classes match the planted ones (see :func:`score_classes`)."""

    precision: dict[str, float]
    """Per non-shared class X: of the live latents classed X, the share whose best planted
    feature (cosine ≥ ``RECOVERED_COSINE`` on the models of X) is of class X (NaN: none)."""
    recall: dict[str, float]
    """Per non-shared class X: of the planted X features, the share recovered by a latent
    classed X."""
    density_error: dict[str, float]
    """Per planted class: mean |density of the matched latent / planted density − 1| over the
    class's recovered features (NaN if none was recovered)."""
    recovered_with_class: float
    """Share of all planted features recovered by a latent of their own class."""


@torch.no_grad()
def score_classes(
    model: Crosscoder, planted: PlantedFeatures, n_tokens: int = 20_000, seed: int = 12345
) -> ClassScores:
    """Precision and recall of the exclusive classes and density error per class."""
    matches = match_planted(model, planted, n_tokens, seed)
    density_L = latent_densities(model, planted, n_tokens, seed)
    cos_MLF = decoder_cosines(model, planted)
    classes = latent_subsets(model)
    models = model.cfg.models
    exclusive = sorted({c for c in planted.classes if c != SHARED})
    precision, recall = {}, {}
    for label in exclusive:
        members = [m for m, name in enumerate(models) if name in _members(label, planted)]
        latents = [i for i, c in enumerate(classes) if c == label and density_L[i] > 0]
        correct = 0
        for i in latents:
            score_F = cos_MLF[members, i, :].min(dim=0).values
            f = int(score_F.argmax())
            correct += planted.classes[f] == label and float(score_F[f]) >= RECOVERED_COSINE
        precision[label] = correct / len(latents) if latents else float("nan")
        planted_x = [m for m in matches if m.planted_class == label]
        hits = [m.cosine >= RECOVERED_COSINE and m.latent_class == label for m in planted_x]
        recall[label] = sum(hits) / len(planted_x)
    density_error = {}
    for label in sorted(set(planted.classes)):
        errors = [
            abs(m.density / m.planted_density - 1)
            for m in matches
            if m.planted_class == label and m.cosine >= RECOVERED_COSINE
        ]
        density_error[label] = sum(errors) / len(errors) if errors else float("nan")
    good = [m.cosine >= RECOVERED_COSINE and m.latent_class == m.planted_class for m in matches]
    return ClassScores(precision, recall, density_error, sum(good) / len(good))


def _members(label: str, planted: PlantedFeatures) -> tuple[str, ...]:
    """The models of a planted class (from a feature of that class)."""
    return planted.members[planted.classes.index(label)]
