"""BatchTopK crosscoders over two or more models with a designated block of shared latents.

Shape letters used in every module of this package (suffixes such as ``W_enc_CL``):
``B`` tokens in a batch, ``L`` latents (dictionary size), ``S`` designated shared latents,
``M`` models, ``D`` one model's d_model, ``C`` the concatenated width Σ_m D_m,
``N`` selected (non-zero) latent entries of a batch. See ``docs/crosscoder.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossdiff.crosscoder.config import CrosscoderConfig, TrainConfig
    from crossdiff.crosscoder.model import Crosscoder, ForwardOutput

_HOMES = {
    "Crosscoder": "crossdiff.crosscoder.model",
    "ForwardOutput": "crossdiff.crosscoder.model",
    "CrosscoderConfig": "crossdiff.crosscoder.config",
    "TrainConfig": "crossdiff.crosscoder.config",
}
"""Where each public name lives; imported on first use, so that importing a torch-free module
of this package (``stage``'s config, for the command line) does not load torch."""

__all__ = ["Crosscoder", "CrosscoderConfig", "ForwardOutput", "TrainConfig"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
