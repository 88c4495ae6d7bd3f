"""Score a crosscoder against planted features: recovery, class, density (see synthetic.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdiff.crosscoder.classes import latent_classes
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.synthetic import PlantedFeatures


@dataclass
class FeatureMatch:
    """The latent that best matches one planted feature."""

    feature: int
    planted_class: str
    latent: int
    """Latent with the highest cosine (the minimum over the models the feature lives in)."""
    cosine: float
    latent_class: str
    """Class from relative decoder norms (classes.py)."""
    planted_density: float
    density: float
    """Firing frequency of the latent on held-out samples, with the inference threshold."""


@torch.no_grad()
def match_planted(
    model: Crosscoder, planted: PlantedFeatures, n_tokens: int = 20_000, seed: int = 12345
) -> list[FeatureMatch]:
    """For every planted feature, its best latent by decoder cosine in each model's own units."""
    batch, _ = planted.sample(n_tokens, torch.Generator().manual_seed(seed))
    density_L = (model.encode(batch) > 0).double().mean(dim=0)
    W_dec_LC = model.decoder_weights().double()
    parts = torch.split(W_dec_LC, list(model.cfg.d_models), dim=1)
    classes = latent_classes(model)
    matches = []
    for f in range(planted.n_features):
        cos = []
        for m, name in enumerate(model.cfg.models):
            u = planted.directions[name][f]
            if u.norm() > 0:
                d = parts[m] / model.input_scale_M[m].double()
                cos.append(torch.nn.functional.cosine_similarity(d, u[None], dim=1))
        score_L = torch.stack(cos).min(dim=0).values
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
