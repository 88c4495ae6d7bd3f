"""Dataclass configs of a toy model, a sweep over them and a toy run, validated on creation."""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crossdiff.config import from_dict, load_toml
from crossdiff.errors import ConfigError, did_you_mean, unknown_choice

CORRELATIONS = ("none", "correlated", "anticorrelated")
INITS = ("random", "aligned", "dense")
ROUTER_WEIGHTS = ("auto", "softmax", "renormalised")
FIGURES = ("none", "phase", "network_sparsity", "init")


@dataclass(frozen=True)
class ToyConfig:
    """One toy model and how it is trained: x̂ = Σ_{e∈topk} w_e·ReLU(W_eᵀW_e x + b_e)."""

    n_features: int = 5
    """Number of features ``n`` (the input and output width)."""
    d_hidden: int = 2
    """Hidden width ``m`` of every expert (superposition needs m < n)."""
    n_experts: int = 1
    """Experts ``E``; 1 with ``k`` = 1 is the dense toy model."""
    k: int = 1
    """Active experts per sample (the top k of the router's softmax, weighted by
    ``router_weights``)."""
    sparsity: float = 0.0
    """Feature sparsity ``S``: each feature is present with probability 1 − S (in [0, 1))."""
    importance_decay: float = 1.0
    """Importance I_i = importance_decay**i (1: equal; with n = 2, the second feature's relative
    importance)."""
    correlation: Literal["none", "correlated", "anticorrelated"] = "none"
    """Feature groups of ``group_size`` consecutive features: present together (correlated) or
    at most one of a group at a time (anticorrelated); ``none``: independent features."""
    group_size: int = 2
    """Features per group for ``correlation`` and for the ``aligned`` initialisation."""
    router_weights: Literal["auto", "softmax", "renormalised"] = "auto"
    """How the k chosen experts are weighted. ``softmax`` (Switch): their router probabilities
    as they are; the reconstruction loss trains the router at any k. ``renormalised``
    (Mixtral): the probabilities rescaled to sum 1 over the k; at k = 1 every weight is exactly
    1, so the router gets no gradient and only ``load_balance`` can train it (warned).
    ``auto`` (default): ``softmax`` at k = 1, ``renormalised`` at k ≥ 2."""
    init: Literal["random", "aligned", "dense"] = "random"
    """``random``; ``aligned``: router row e picks out feature group e (disjoint groups);
    ``dense``: every expert starts from a dense model trained first (plus small noise)."""
    load_balance: float = 0.0
    """Weight of the load-balancing loss E·Σ_e f_e·P_e (0: none)."""
    steps: int = 2000
    """Adam steps."""
    batch_size: int = 512
    """Samples per step."""
    lr: float = 1e-2
    """Adam learning rate."""
    seed: int = 0
    """Seed of the initialisation and of the data stream (models with one seed see the same
    random numbers, whatever else differs)."""

    def __post_init__(self) -> None:
        for name in ("n_features", "d_hidden", "n_experts", "k", "group_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.k > self.n_experts:
            raise ConfigError(
                f"k (active experts) must be at most n_experts ({self.n_experts}), got k={self.k}"
            )
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if not self.importance_decay > 0:
            raise ConfigError(f"importance_decay must be > 0, got {self.importance_decay!r}")
        if self.correlation not in CORRELATIONS:
            raise unknown_choice("correlation", self.correlation, CORRELATIONS)
        if self.router_weights not in ROUTER_WEIGHTS:
            raise unknown_choice("router_weights", self.router_weights, ROUTER_WEIGHTS)
        if self.init not in INITS:
            raise unknown_choice("init", self.init, INITS)
        if self.load_balance < 0:
            raise ConfigError(f"load_balance must be >= 0, got {self.load_balance!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.renormalised and self.k == 1 and self.n_experts > 1 and self.load_balance == 0:
            warnings.warn(
                "router_weights='renormalised' with k=1 and load_balance=0: every routed weight "
                "is 1, so the router gets no gradient and keeps its initialisation; use "
                "router_weights='softmax' (or 'auto') or load_balance > 0",
                stacklevel=3,
            )
        if self.d_hidden >= self.n_features:
            warnings.warn(
                f"d_hidden={self.d_hidden} >= n_features={self.n_features}: every feature fits "
                "in its own dimension, so superposition cannot occur",
                stacklevel=3,
            )

    @property
    def renormalised(self) -> bool:
        """Whether the top-k weights are renormalised over the k (``router_weights`` resolved)."""
        if self.router_weights == "auto":
            return self.k > 1
        return self.router_weights == "renormalised"

    @property
    def network_sparsity(self) -> float:
        """Active over total experts, k/E."""
        return self.k / self.n_experts


PER_MODEL = (
    "sparsity", "importance_decay", "n_experts", "k", "router_weights", "init", "load_balance",
    "seed",
)  # fmt: skip
"""Settings that may differ between models trained in one batch; the rest define the batch."""


def batch_key(config: ToyConfig) -> tuple[Any, ...]:
    """The settings models must share to be trained together in one batch."""
    return tuple(
        getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in PER_MODEL
    )


@dataclass(frozen=True)
class SweepConfig:
    """A grid of toy models: a base model and axes (settings and their values), all combined."""

    model: ToyConfig = field(default_factory=ToyConfig)
    """The base model; each axis overrides one of its settings."""
    axes: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Setting name -> values; the sweep trains the Cartesian product (include ``seed``). An
    axis of tables (``experts = [{n_experts = 2, k = 1}, …]``) varies settings jointly."""
    figure: Literal["none", "phase", "network_sparsity", "init"] = "none"
    """Which report figure the sweep feeds: ``phase`` (sparsity × importance_decay),
    ``network_sparsity`` (monosemanticity vs k/E) or ``init`` (specialisation per init)."""
    title: str = ""
    """Shown in the report (default: the sweep's name)."""

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(ToyConfig)]
        axes = {}
        for axis, values in dict(self.axes).items():
            values = tuple(values) if isinstance(values, list | tuple) else (values,)
            if not values:
                raise ConfigError(f"sweep axis {axis!r} has no values; expected a list")
            joint = all(isinstance(v, dict) for v in values)
            for key in {k for v in values if isinstance(v, dict) for k in v} if joint else [axis]:
                if key not in names:
                    raise ConfigError(
                        f"unknown sweep axis {key!r}{did_you_mean(key, names)}; "
                        f"expected settings of a toy model: {', '.join(names)}"
                    )
            axes[axis] = values
        object.__setattr__(self, "axes", axes)
        if self.figure not in FIGURES:
            raise unknown_choice("figure", self.figure, FIGURES)

    def models(self) -> list[ToyConfig]:
        """Every model of the grid (axes varied in order, the last fastest), validated.

        An axis whose values are tables sets several settings at once (``{n_experts = 4, k = 2}``),
        so that only valid combinations are swept; its name is then a free label.
        """
        names = list(self.axes)
        models = []
        for combo in itertools.product(*(self.axes[name] for name in names)):
            settings: dict[str, Any] = {}
            for name, value in zip(names, combo, strict=True):
                settings.update(value if isinstance(value, dict) else {name: value})
            models.append(dataclasses.replace(self.model, **settings))
        return models


@dataclass(frozen=True)
class ToyRunConfig:
    """A toy run: named sweeps, each trained (in batches) into its own stage directory."""

    name: str = "toy superposition"
    """Title of the report."""
    sweeps: dict[str, SweepConfig] = field(default_factory=dict)
    """Sweep name -> its grid."""
    threads: int | None = None
    """torch threads (None: torch's default)."""
    progress: bool = True
    """Show a progress bar per batch of models."""
    claims: tuple[str, ...] = ()
    """Claims of the seed study the report judges (names in ``crossdiff.toy.claims.CLAIMS``)."""

    def __post_init__(self) -> None:
        from crossdiff.toy.claims import CLAIMS

        object.__setattr__(self, "claims", tuple(self.claims))
        for claim in self.claims:
            if claim not in CLAIMS:
                raise unknown_choice("toy claim", claim, CLAIMS)
        if len(set(self.claims)) != len(self.claims):
            raise ConfigError(f"claims lists a claim twice: {list(self.claims)}")
        if not self.sweeps:
            raise ConfigError("a toy run needs at least one [sweeps.NAME] table")
        for name in self.sweeps:
            if not name or "/" in name or name.startswith("."):
                raise ConfigError(f"sweep name {name!r} must be a plain directory name")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")


def toy_run_config(data: dict[str, Any], where: str = "toy config") -> ToyRunConfig:
    """A validated run config from a dict; a bad model in a sweep's grid names the sweep."""
    config = from_dict(ToyRunConfig, data, where)
    for name, sweep in config.sweeps.items():
        try:
            sweep.models()
        except ConfigError as error:
            raise ConfigError(f"{where}: sweep {name!r}: {error}") from None
        except TypeError as error:  # a value of the wrong type, e.g. sparsity = "high"
            message = f"{where}: sweep {name!r}: a setting has the wrong type ({error})"
            raise ConfigError(message) from None
    return config


def load_toy_config(path: str | Path) -> ToyRunConfig:
    """Read a toy run config (TOML; see ``examples/toy_superposition.toml``)."""
    return toy_run_config(load_toml(path), str(path))
