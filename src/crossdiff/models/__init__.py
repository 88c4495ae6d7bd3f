"""The in-repo 5-layer dense and MoE language models (TransformerLens), with equal active
parameters, and their training."""

from crossdiff.models.build import build_model, hooked_config
from crossdiff.models.config import PRESETS, ModelConfig, TrainConfig, preset
from crossdiff.models.load import load_model
from crossdiff.models.params import ParamCounts, count_parameters

__all__ = [
    "PRESETS",
    "ModelConfig",
    "ParamCounts",
    "TrainConfig",
    "build_model",
    "count_parameters",
    "hooked_config",
    "load_model",
    "preset",
]
