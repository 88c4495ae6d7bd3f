"""The settings of a whole run: one TOML file, one dataclass per stage.

Unknown keys anywhere are rejected with the closest valid key (``crossdiff.config.from_dict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdiff.config import from_dict, load_toml
from crossdiff.corpus import CorpusConfig
from crossdiff.crosscoder.stage import CrosscoderStageConfig as CrosscoderSpec
from crossdiff.errors import ConfigError, unknown_choice
from crossdiff.runtime import check_device_name
from crossdiff.tracking import TrackingConfig

ARCHES = ("dense", "moe")
MODEL_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the run: trained here from a preset, or loaded from ``path``."""

    arch: str | None = None
    """``dense`` or ``moe`` for a model trained by the run; None with ``path``."""
    preset: str = "tiny"
    """Preset of ``crossdiff.models.config.PRESETS`` to train with."""
    path: str | None = None
    """An existing model (in-repo model directory, Hugging Face directory or hub name)."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's model settings (``ModelConfig`` fields)."""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's training settings (``models.config.TrainConfig`` fields)."""

    def __post_init__(self) -> None:
        if (self.arch is None) == (self.path is None):
            raise ConfigError("a model needs exactly one of arch (train it) or path (load it)")
        if self.arch is not None and self.arch not in ARCHES:
            raise unknown_choice("arch", self.arch, ARCHES)


@dataclass(frozen=True)
class HarvestSpec:
    """Which site(s) of every model are harvested, and how much."""

    site: str = "2.mlp_out"
    """The site, by common name (``L.mlp_out``, ``L.resid_post``...) or native name."""
    sites: tuple[str, ...] = ()
    """Several sites harvested together (replaces ``site``; a crosscoder over them sets its
    ``sites`` too); empty: ``site`` alone."""
    train_sequences: int | None = None
    """Training-split sequences harvested for the crosscoder (None: all)."""
    validation_sequences: int | None = None
    """Validation-split sequences harvested for evaluation and analyses (None: all)."""
    dtype: str = "fp32"
    """Storage precision: fp32, bf16 or fp16."""
    batch_sequences: int = 32
    """Sequences per forward pass."""
    shard_sequences: int = 256
    """Sequences per shard (a multiple of batch_sequences)."""
    model_dtype: str = "fp32"
    """Precision the models run in while harvesting: fp32, bf16 or fp16."""
    device: str = "auto"
    """Where the models run while harvesting: ``auto`` (CUDA where present), ``cpu``,
    ``cuda``, ``cuda:N``."""

    def __post_init__(self) -> None:
        if self.model_dtype not in MODEL_DTYPES:
            raise unknown_choice("harvest model_dtype", str(self.model_dtype), MODEL_DTYPES)
        check_device_name(self.device, "harvest device")
        object.__setattr__(self, "sites", tuple(self.sites))
        if len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"harvest sites must be distinct, got {list(self.sites)}")

    @property
    def harvested(self) -> list[str]:
        """The sites harvested: ``sites`` if given, else ``[site]``."""
        return list(self.sites) or [self.site]


@dataclass(frozen=True)
class RunConfig:
    """Everything ``crossdiff run`` does, stage by stage."""

    name: str = "run"
    """A label for the report."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The corpus stage."""
    models: dict[str, ModelSpec] = field(default_factory=dict)
    """Model name -> its spec; exactly the names used in every output (``dense``, ``moe``)."""
    harvest: HarvestSpec = field(default_factory=HarvestSpec)
    """The harvest stage."""
    crosscoder: CrosscoderSpec = field(default_factory=CrosscoderSpec)
    """The crosscoder stage."""
    analyses: tuple[str, ...] = ("feature_classes", "density", "dashboards")
    """Analysis plugins run on the result, in order."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Optional experiment tracking of the model and crosscoder training (off by default; not
    part of any stage's fingerprint: it changes no result)."""

    def __post_init__(self) -> None:
        if len(self.models) < 2:
            raise ConfigError(
                f"a run needs at least two models to compare, got {sorted(self.models)}"
            )


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run config from TOML, with ``overrides`` (``KEY=VALUE``, see
    :func:`apply_override`) applied in order; every table and key is checked."""
    data = load_toml(path)
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(RunConfig, data, "config")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Set ``DOTTED.KEY=VALUE`` in a config's dict, e.g. ``crosscoder.steps=100`` or
    ``models.dense.train={ tokens = 1000 }``: VALUE is read as a TOML value (a number, a
    boolean, a quoted string, an array, an inline table), and as a plain string if it is not
    one. Tables on the way are created; the key itself is checked when the config is built."""
    import tomllib

    key, sep, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {assignment!r} is not of the form DOTTED.KEY=VALUE")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    table = data
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is a value, not a table")
    table[parts[-1]] = value
