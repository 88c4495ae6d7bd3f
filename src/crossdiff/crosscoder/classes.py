"""Feature classes of crosscoder latents from their per-model decoder norms.

Convention (two models A, B, in the crosscoder's config order): r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖);
``A_only`` if r < 0.1, ``B_only`` if r > 0.9, ``shared`` in between. Designated shared latents have
r = 0.5 by construction. With more than two models a latent is ``<m>_only`` when model m holds more
than 1 − ``margin`` of Σ_m ‖d_i^m‖, else shared.
"""

from __future__ import annotations

import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.synthetic import SHARED, only


def raw_decoder_norms(model: Crosscoder) -> torch.Tensor:
    """``[L, M]`` decoder norms in each model's own units (‖d_i^m‖ / s_m)."""
    return model.decoder_norms().detach() / model.input_scale_M


def relative_decoder_norm(model: Crosscoder) -> torch.Tensor:
    """``[L]`` r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖) for the first two models."""
    norms = raw_decoder_norms(model)
    return norms[:, 1] / (norms[:, 0] + norms[:, 1]).clamp_min(1e-30)


def latent_classes(model: Crosscoder, margin: float = 0.1) -> list[str]:
    """Class of every latent: ``shared`` or ``<model>_only`` (see the module docstring)."""
    norms = raw_decoder_norms(model)
    share = norms / norms.sum(dim=1, keepdim=True).clamp_min(1e-30)
    best = share.argmax(dim=1)
    names = model.cfg.models
    return [
        only(names[int(b)]) if float(share[i, b]) > 1 - margin else SHARED
        for i, b in enumerate(best)
    ]
