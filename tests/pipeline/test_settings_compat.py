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


FINGERPRINTS = {
    "examples/quickstart.toml": "c1170251b5edc5cb",
    "examples/paper.toml": "825d30827e9d9ee6",
    "examples/quickstart_layers.toml": "108183abec548c87",
}
"""The report stage's fingerprint (it chains every stage's) of each shipped config, as the code
before the recipe defaults computed it: runs made then stay up to date."""


@pytest.mark.parametrize("path", sorted(FINGERPRINTS))
def test_the_shipped_configs_keep_their_fingerprints(path: str) -> None:
    import json
    from pathlib import Path

    from crossdiff.pipeline import load_run_config
    from crossdiff.pipeline.run import _hash

    config = load_run_config(Path(__file__).resolve().parents[2] / path)
    upstream = ""
    for stage in STAGES:
        upstream = _hash(upstream + json.dumps(stage_settings(config, stage), sort_keys=True))
    assert upstream == FINGERPRINTS[path]


def test_the_crosscoder_defaults_are_the_quickstart_recipe() -> None:
    """Left unset, every crosscoder setting the quickstart gives resolves to its value there
    (for its d_model 128), so ``crossdiff train-crosscoder`` alone trains the same crosscoder."""
    from pathlib import Path

    from crossdiff.config import load_toml
    from crossdiff.crosscoder.stage import CrosscoderStageConfig

    recipe = load_toml(Path(__file__).resolve().parents[2] / "examples/quickstart.toml")
    defaults = CrosscoderStageConfig(progress=False)
    dims = (128, 128)
    size = defaults.resolved_dict_size(dims)
    resolved = {
        "k": defaults.resolved_k(dims),
        "n_shared": defaults.resolved_n_shared(size, dims),
    }
    for name, value in recipe["crosscoder"].items():
        assert resolved.get(name, getattr(defaults, name)) == value, name
    assert defaults.sparsity_coeff > 0  # exclusive latents can form
    assert defaults.resolved_n_shared(size, (128, 96)) == 0  # a tied block needs equal widths


def test_an_unset_k_or_n_shared_records_its_rule() -> None:
    """A run that left k or n_shared unset under the earlier rules (d_model/8, 0) does not match
    a record made now, so it is rerun, not taken as up to date."""
    from crossdiff.crosscoder.stage import UNSET_RULES, CrosscoderStageConfig

    record = CrosscoderStageConfig().record()
    assert record["k"] == UNSET_RULES["k"] and record["n_shared"] == UNSET_RULES["n_shared"]
    given = CrosscoderStageConfig(k=24, n_shared=128).record()
    assert (given["k"], given["n_shared"]) == (24, 128)
