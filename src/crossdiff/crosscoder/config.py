"""Dataclass configs of a crosscoder (its shape) and of its training run, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crossdiff.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16", "float64")
"""The weight dtypes a crosscoder may have."""


@dataclass(frozen=True)
class CrosscoderConfig:
    """The shape of a crosscoder; saved as ``cfg.json`` beside its weights."""

    models: tuple[str, ...]
    """Model names, in the order their activations are concatenated."""
    d_models: tuple[int, ...]
    """Each model's activation width at its site, aligned with ``models``."""
    dict_size: int
    """Number of latents ``L``."""
    k: float
    """Mean active latents per token (BatchTopK keeps round(k·B) per batch); may be fractional."""
    n_shared: int = 0
    """Designated shared latents ``S``: the first S, one tied decoder vector for all models."""
    n_dedicated: tuple[int, ...] = ()
    """Dedicated latents per model (aligned with ``models``; empty: none): after the shared
    block, ``n_dedicated[m]`` latents whose decoder into every other model is structurally zero
    (not a parameter), so they are ``<model>_only`` by construction."""
    dedicated_encoder_own: bool = False
    """Dedicated latents read only their own model's activations (their encoder weights from
    the other models are masked to exactly zero)."""
    sites: tuple[str, ...] = ()
    """Several sites per model in one crosscoder (every model has each, in this order; batch
    keys ``model/site``); empty: one site per model, batch keys the model names."""
    rank_by_decoder_norm: bool = True
    """Rank latents by activation × Σ_m ‖d_i^m‖ (training and inference), not activation."""
    sparsity_coeff: float = 0.0
    """Optional extra penalty λ·Σ_i f_i·w_i·Σ_m ‖d_i^m‖ (0 = BatchTopK alone)."""
    shared_sparsity_ratio: float = 0.15
    """w_i for designated shared latents (1 for the others): λ_shared = ratio·λ."""
    seed: int = 0
    """Seed of the weight initialisation."""
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    """Dtype of the weights and of the step's arithmetic (sparse products accumulate in at
    least float32); the input scales and θ stay float32. float16 is for inference: training
    refuses it (Adam's moments underflow in float16)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "d_models", tuple(int(d) for d in self.d_models))
        object.__setattr__(self, "k", float(self.k))
        object.__setattr__(self, "n_dedicated", tuple(int(n) for n in self.n_dedicated))
        object.__setattr__(self, "sites", tuple(self.sites))
        if len(self.models) < 2:
            raise ConfigError(f"a crosscoder needs at least two models, got {list(self.models)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"model names must be distinct, got {list(self.models)}")
        if len(self.d_models) != len(self.models):
            raise ConfigError(
                f"d_models has {len(self.d_models)} entries for {len(self.models)} models"
            )
        if any(d < 1 for d in self.d_models):
            raise ConfigError(f"every d_model must be positive, got {list(self.d_models)}")
        if self.dict_size < 1:
            raise ConfigError(f"dict_size must be positive, got {self.dict_size}")
        if not 0 < self.k < self.dict_size:
            raise ConfigError(
                f"k must satisfy 0 < k < dict_size ({self.dict_size}), got k={self.k}"
            )
        if not 0 <= self.n_shared <= self.dict_size:
            raise ConfigError(
                f"n_shared (shared block) must be between 0 and dict_size ({self.dict_size}), "
                f"got {self.n_shared}"
            )
        if self.n_shared and len(set(self.d_models)) != 1:
            raise ConfigError(
                "a designated shared block ties one decoder vector across models, so it needs "
                f"equal d_models; got {dict(zip(self.models, self.d_models, strict=True))} "
                "(set n_shared=0 for models of different width)"
            )
        if self.n_dedicated and len(self.n_dedicated) != len(self.models):
            raise ConfigError(
                f"n_dedicated has {len(self.n_dedicated)} entries for {len(self.models)} models "
                f"{list(self.models)}, got {list(self.n_dedicated)}"
            )
        if any(n < 0 for n in self.n_dedicated):
            raise ConfigError(f"n_dedicated must be >= 0 per model, got {list(self.n_dedicated)}")
        if self.n_shared + sum(self.n_dedicated) > self.dict_size:
            raise ConfigError(
                f"the partition (n_shared {self.n_shared} + n_dedicated "
                f"{list(self.n_dedicated)} = {self.n_shared + sum(self.n_dedicated)} latents) "
                f"is larger than dict_size {self.dict_size}"
            )
        if len(set(self.sites)) != len(self.sites) or any(not s for s in self.sites):
            raise ConfigError(f"sites must be distinct non-empty names, got {list(self.sites)}")
        if self.sparsity_coeff < 0:
            raise ConfigError(f"sparsity_coeff must be >= 0, got {self.sparsity_coeff}")
        if not 0 <= self.shared_sparsity_ratio <= 1:
            raise ConfigError(
                f"shared_sparsity_ratio must be in [0, 1], got {self.shared_sparsity_ratio}"
            )

    @property
    def n_sites(self) -> int:
        """Sites per model (1 when ``sites`` is empty)."""
        return max(1, len(self.sites))

    @property
    def widths(self) -> tuple[int, ...]:
        """Each model's columns in ``C``: n_sites × D_m (its sites side by side)."""
        return tuple(self.n_sites * d for d in self.d_models)

    @property
    def d_total(self) -> int:
        """The concatenated width ``C`` = Σ_m n_sites·D_m."""
        return sum(self.widths)

    @property
    def inputs(self) -> tuple[tuple[str, int, str | None, int], ...]:
        """The input blocks ``I`` in column order: (batch key, model index, site, width).

        Model-major: model m's sites are adjacent, so each model's columns are contiguous."""
        out = []
        for m, (name, d) in enumerate(zip(self.models, self.d_models, strict=True)):
            if not self.sites:
                out.append((name, m, None, d))
            for site in self.sites:
                out.append((f"{name}/{site}", m, site, d))
        return tuple(out)

    @property
    def input_keys(self) -> tuple[str, ...]:
        """Batch keys of the input blocks (the model names for a single site)."""
        return tuple(key for key, _, _, _ in self.inputs)

    @property
    def dedicated_ranges(self) -> tuple[tuple[int, int], ...]:
        """``[start, stop)`` of each model's dedicated latents (empty ranges without them)."""
        out, start = [], self.n_shared
        for n in self.n_dedicated or (0,) * len(self.models):
            out.append((start, start + n))
            start += n
        return tuple(out)

    @property
    def n_free(self) -> int:
        """Latents neither designated shared nor dedicated."""
        return self.dict_size - self.n_shared - sum(self.n_dedicated)

    def record(self) -> dict:
        """The config as ``cfg.json`` and the stage's manifest record it: fields added later
        left out while at their default, so a single-site pair's record is as before."""
        from crossdiff.config import compact_record, to_dict

        return compact_record(to_dict(self), NEW_FIELDS)


NEW_FIELDS = {"n_dedicated": (), "dedicated_encoder_own": False, "sites": ()}
"""Fields added after the first crosscoders were saved, with their defaults: left out of
records where they hold the default, so that an older run's settings still match."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train a crosscoder: optimiser, schedules, aux-k, checkpoints."""

    steps: int
    """Optimiser steps (one global batch each)."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0."""
    decay_start: float = 0.8
    """Fraction of ``steps`` after which the rate decays linearly to ``lr_end_fraction·lr``."""
    lr_end_fraction: float = 0.0
    """Final learning rate as a fraction of ``lr``."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (β1, β2)."""
    aux_k: int | None = None
    """Dead latents used by the aux-k loss per token (None: the largest d_model // 2)."""
    aux_coeff: float = 1 / 32
    """Weight of the aux-k loss."""
    dead_tokens: int = 10_000_000
    """A latent is dead after this many training tokens without firing."""
    k_start: float | None = None
    """Optional k annealing: start at this k and reach the config's k after ``k_anneal_steps``."""
    k_anneal_steps: int = 0
    """Steps of the linear k annealing."""
    threshold_decay: float = 0.99
    """EMA decay of the inference threshold θ (the batch's smallest kept score); at step s the
    decay used is min(this, (1 + s) / (10 + s)) so that θ does not lag the early steps."""
    kernels: Literal["sparse", "dense"] = "sparse"
    """``sparse``: decode and backward touch only selected latents; ``dense``: plain matmuls."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every this many steps (0: only at the end)."""
    max_nan_batches: int = 10
    """Batches with NaN/inf are skipped and counted; more than this stops training."""
    progress: bool = False
    """Show a tqdm bar with live FVE, L0 and dead fraction."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if self.steps < 1:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.k_anneal_steps < 0 or self.checkpoint_every < 0:
            raise ConfigError("warmup_steps, k_anneal_steps and checkpoint_every must be >= 0")
        if not 0 <= self.decay_start <= 1 or not 0 <= self.lr_end_fraction <= 1:
            raise ConfigError("decay_start and lr_end_fraction must be in [0, 1]")
        if not self.aux_coeff >= 0:
            raise ConfigError(f"aux_coeff must be >= 0, got {self.aux_coeff}")
        if self.aux_k is not None and self.aux_k < 1:
            raise ConfigError(f"aux_k must be positive, got {self.aux_k}")
        if self.k_start is not None and self.k_start <= 0:
            raise ConfigError(f"k_start must be positive, got {self.k_start}")
        if not 0 <= self.threshold_decay < 1:
            raise ConfigError(f"threshold_decay must be in [0, 1), got {self.threshold_decay}")
        if self.kernels not in ("sparse", "dense"):
            raise ConfigError(f"kernels must be 'sparse' or 'dense', got {self.kernels!r}")
        if self.max_nan_batches < 0:
            raise ConfigError(f"max_nan_batches must be >= 0, got {self.max_nan_batches}")
