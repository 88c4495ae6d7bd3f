"""Settings added after the first runs stay out of fingerprints until used, so older runs stay
up to date; settings that change no result (device, sharding, tracking) never enter them."""

from __future__ import annotations

import dataclasses

import pytest

from crossdiff.errors import ConfigError
from crossdiff.pipeline.config import HarvestSpec, ModelSpec, RunConfig
from crossdiff.pipeline.run import STAGES, stage_settings
from crossdiff.tracking import TrackingConfig

MODELS = {"dense": ModelSpec(arch="dense"), "moe": ModelSpec(arch="moe")}
NEW = {
    "corpus": {"max_characters_per_domain": 10_000},
    "harvest": {"sites": ("0.mlp_out", "1.mlp_out"), "model_dtype": "bf16"},
    "crosscoder": {
        "n_dedicated": 8,
        "dedicated_encoder_own": True,
        "sites": ("0.mlp_out", "1.mlp_out"),
    },
}
"""Fields each stage gained after runs existed, with a non-default value."""


def test_new_fields_at_their_default_are_not_in_the_fingerprint() -> None:
    settings = {stage: stage_settings(RunConfig(models=MODELS), stage) for stage in STAGES}
    for stage, fields in NEW.items():
        assert not set(fields) & set(settings[stage]), stage


@pytest.mark.parametrize("stage", sorted(NEW))
def test_a_new_field_in_use_changes_the_fingerprint(stage: str) -> None:
    base = RunConfig(models=MODELS)
    for name, value in NEW[stage].items():
        changed = dataclasses.replace(getattr(base, stage), **{name: value})
        settings = stage_settings(dataclasses.replace(base, **{stage: changed}), stage)
        assert name in settings and settings != stage_settings(base, stage)


def test_device_sharding_and_tracking_enter_no_fingerprint() -> None:
    base = RunConfig(models=MODELS)
    other = dataclasses.replace(
        base,
        harvest=dataclasses.replace(base.harvest, device="cuda:1"),
        crosscoder=dataclasses.replace(base.crosscoder, latent_shards=2),
        tracking=TrackingConfig("wandb"),
    )
    assert all(stage_settings(base, s) == stage_settings(other, s) for s in STAGES)


def test_a_bad_harvest_device_is_named() -> None:
    with pytest.raises(ConfigError, match=r"harvest device must be .* got 'gpu0'"):
        HarvestSpec(device="gpu0")
