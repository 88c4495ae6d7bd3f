"""Toy models of superposition with dense and Mixture-of-Experts layers (Elhage et al. style).

Shape letters used in every module of this package (suffixes such as ``W_MEHN``):
``M`` models trained together (the leading model axis), ``B`` samples in a batch, ``N`` features
(``n``), ``H`` hidden dimensions (``m``), ``E`` experts, ``K`` active experts per sample.
A dense toy model is the MoE toy model with E = K = 1. See ``docs/toy.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossdiff.toy.config import SweepConfig, ToyConfig, ToyRunConfig, load_toy_config
    from crossdiff.toy.model import ToyForward, ToyParams
    from crossdiff.toy.stage import run_toy
    from crossdiff.toy.train import train_models

_HOMES = {
    "ToyConfig": "crossdiff.toy.config",
    "SweepConfig": "crossdiff.toy.config",
    "ToyRunConfig": "crossdiff.toy.config",
    "load_toy_config": "crossdiff.toy.config",
    "ToyParams": "crossdiff.toy.model",
    "ToyForward": "crossdiff.toy.model",
    "train_models": "crossdiff.toy.train",
    "run_toy": "crossdiff.toy.stage",
}
"""Where each public name lives; imported on first use (the configs do not load torch)."""

__all__ = [
    "SweepConfig",
    "ToyConfig",
    "ToyForward",
    "ToyParams",
    "ToyRunConfig",
    "load_toy_config",
    "run_toy",
    "train_models",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
