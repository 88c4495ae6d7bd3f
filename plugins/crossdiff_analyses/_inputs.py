"""Where the feature analyses find their inputs in a run directory."""

from __future__ import annotations

from crossdiff.analysis import RunContext
from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.stage import WEIGHTS_DIR
from crossdiff.store import StoreInfo, open_store

CROSSCODER_STAGE = "crosscoder"
HELDOUT_STAGE = "activations/validation"


def load_crosscoder(context: RunContext) -> Crosscoder:
    """The run's trained crosscoder."""
    return Crosscoder.from_pretrained(context.stage_dir(CROSSCODER_STAGE) / WEIGHTS_DIR)


def heldout_store(context: RunContext) -> StoreInfo:
    """The run's held-out activation store (harvested from the validation split)."""
    return open_store(context.stage_dir(HELDOUT_STAGE))
