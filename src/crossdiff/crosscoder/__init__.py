"""BatchTopK crosscoders over two or more models with a designated block of shared latents.

Shape letters used in every module of this package (suffixes such as ``W_enc_CL``):
``B`` tokens in a batch, ``L`` latents (dictionary size), ``S`` designated shared latents,
``M`` models, ``D`` one model's d_model, ``C`` the concatenated width Σ_m D_m,
``N`` selected (non-zero) latent entries of a batch. See ``docs/crosscoder.md``.
"""

from __future__ import annotations

from crossdiff.crosscoder.config import CrosscoderConfig, TrainConfig
from crossdiff.crosscoder.model import Crosscoder, ForwardOutput

__all__ = ["Crosscoder", "CrosscoderConfig", "ForwardOutput", "TrainConfig"]
