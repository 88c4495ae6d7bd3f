"""Feature classes of crosscoder latents from their per-model decoder norms.

Every decoder-norm statistic is taken in the crosscoder's **normalised space**: the space it was
trained in, where each model's activations are scaled by its fixed input scale s_m so that
E‖s_m·x_m‖² = D_m. Only there are the models' decoder norms comparable: in each model's raw units
a model whose activations are 10× larger would get 10× larger norms, and rescaling one model's
activations would move latents between classes. In the normalised space the designated shared
block has r = 0.5 exactly, and the classes do not change when a model's activations are rescaled.

Convention (two models A, B, in the crosscoder's config order): r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖);
``A_only`` if r < 0.1, ``B_only`` if r > 0.9, ``shared`` in between. With more than two models a
latent is ``<m>_only`` when model m holds more than 1 − ``margin`` of Σ_m ‖d_i^m‖, else shared.
"""

from __future__ import annotations

import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.synthetic import SHARED, only


@torch.no_grad()
def latent_decoder_norms(model: Crosscoder) -> torch.Tensor:
    """``[L, M]`` ‖d_i^m‖ in the crosscoder's normalised space (float64, on the CPU).

    The one source of decoder norms for classes, relative norms and latent scaling."""
    return model.decoder_norms().detach().double().cpu()


def relative_decoder_norm(model: Crosscoder) -> torch.Tensor:
    """``[L]`` r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖) for the first two models."""
    norms = latent_decoder_norms(model)
    return norms[:, 1] / (norms[:, 0] + norms[:, 1]).clamp_min(1e-30)


def latent_classes(model: Crosscoder, margin: float = 0.1) -> list[str]:
    """Class of every latent: ``shared`` or ``<model>_only`` (see the module docstring)."""
    norms = latent_decoder_norms(model)
    share = norms / norms.sum(dim=1, keepdim=True).clamp_min(1e-30)
    best = share.argmax(dim=1)
    names = model.cfg.models
    return [
        only(names[int(b)]) if float(share[i, b]) > 1 - margin else SHARED
        for i, b in enumerate(best)
    ]
