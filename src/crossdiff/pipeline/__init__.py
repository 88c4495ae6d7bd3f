"""The end-to-end pipeline: one config, one run directory, every stage resumable."""

from crossdiff.pipeline.config import (
    CrosscoderSpec,
    HarvestSpec,
    ModelSpec,
    RunConfig,
    load_run_config,
)
from crossdiff.pipeline.run import STAGES, run_pipeline

__all__ = [
    "STAGES",
    "CrosscoderSpec",
    "HarvestSpec",
    "ModelSpec",
    "RunConfig",
    "load_run_config",
    "run_pipeline",
]
