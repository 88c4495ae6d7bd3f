"""Model and training settings of the in-repo dense/MoE pair, with their presets.

The pair shares everything but the MLP: the dense model has one gated MLP of width ``d_mlp``;
the MoE model has ``num_experts`` gated MLPs of width ``expert_d_mlp`` of which
``experts_per_token`` (k) run per token, with ``k * expert_d_mlp == d_mlp`` so both spend the same
MLP width (and parameters) on each token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from crossdiff.errors import ConfigError, unknown_choice

Arch = Literal["dense", "moe"]
ARCHS: tuple[str, ...] = ("dense", "moe")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}.{name} {value!r} must be a positive integer")


@dataclass(frozen=True)
class ModelConfig:
    """A 5-layer (by default) decoder-only transformer, dense or Mixture-of-Experts."""

    arch: Arch = "dense"
    """``dense`` (one gated MLP per layer) or ``moe`` (top-k routed gated experts)."""
    n_layers: int = 5
    """Transformer blocks."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per layer."""
    d_head: int | None = None
    """Width of one head; None means ``d_model // n_heads``."""
    d_mlp: int = 512
    """Dense MLP width, and the ACTIVE MLP width per token of the MoE (k × expert width)."""
    num_experts: int = 8
    """Experts per MoE layer (E); ignored by the dense model."""
    experts_per_token: int = 2
    """Experts each token is routed to (k); ignored by the dense model."""
    expert_d_mlp: int | None = None
    """Width of one expert; None means ``d_mlp // experts_per_token`` (must divide exactly)."""
    vocab_size: int = 8192
    """Vocabulary size; must equal the corpus tokenizer's."""
    n_ctx: int = 128
    """Longest sequence the model takes (the corpus context length)."""
    act_fn: str = "silu"
    """Activation of the gated MLPs (a TransformerLens ``act_fn`` name)."""
    positional_embedding_type: Literal["rotary", "standard"] = "rotary"
    """Rotary (Mixtral-style) or learned absolute positions."""
    norm_topk_prob: bool = True
    """Renormalise the k routing weights of a token to sum to 1 (Mixtral does)."""
    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise unknown_choice("model arch", str(self.arch), ARCHS)
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "vocab_size", "n_ctx"):
            _positive_int("model", name, getattr(self, name))
        if self.d_head is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                "set d_head explicitly"
            )
        if self.d_head is not None:
            _positive_int("model", "d_head", self.d_head)
        if self.positional_embedding_type not in ("rotary", "standard"):
            raise unknown_choice(
                "positional_embedding_type",
                str(self.positional_embedding_type),
                ("rotary", "standard"),
            )
        if self.arch == "moe":
            self._check_moe()

    def _check_moe(self) -> None:
        _positive_int("model", "num_experts", self.num_experts)
        _positive_int("model", "experts_per_token", self.experts_per_token)
        k, e = self.experts_per_token, self.num_experts
        if k > e:
            raise ConfigError(
                f"model.experts_per_token (k) {k} exceeds num_experts (E) {e}: "
                "a token cannot be routed to more experts than exist"
            )
        if self.expert_d_mlp is None:
            if self.d_mlp % k:
                raise ConfigError(
                    f"model.d_mlp {self.d_mlp} is not divisible by experts_per_token {k}: "
                    "no integer expert width gives k × expert width = d_mlp (equal active "
                    "parameters); choose d_mlp a multiple of k"
                )
        else:
            _positive_int("model", "expert_d_mlp", self.expert_d_mlp)
            if k * self.expert_d_mlp != self.d_mlp:
                raise ConfigError(
                    f"model.expert_d_mlp {self.expert_d_mlp} × experts_per_token {k} = "
                    f"{k * self.expert_d_mlp} ≠ d_mlp {self.d_mlp}: the MoE would not have the "
                    "dense model's active parameters; set expert_d_mlp = d_mlp / k"
                )

    @property
    def head_dim(self) -> int:
        """The width of one attention head."""
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def expert_width(self) -> int:
        """The width of one MoE expert (``d_mlp`` for the dense model)."""
        if self.arch == "dense":
            return self.d_mlp
        return self.expert_d_mlp or self.d_mlp // self.experts_per_token


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: optimiser, schedule, batches, auxiliary losses, checkpoints."""

    tokens: int = 4_000_000
    """Training tokens (input positions) to see; steps = tokens // (batch_size × n_ctx)."""
    batch_size: int = 32
    """GLOBAL batch in sequences (split evenly across DDP ranks)."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr × min_lr_ratio``."""
    warmup_steps: int = 50
    """Linear warm-up steps from 0 to ``lr``."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (on matrices only; not on biases, norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    load_balance_coef: float = 0.01
    """Weight of the Switch load-balancing loss E·Σ f_e·P_e of each MoE layer (MoE only)."""
    z_loss_coef: float = 0.0
    """Weight of each layer's router z-loss mean(logsumexp(logits)²) (MoE only; 0 disables)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on CUDA with bf16 support, else fp32."""
    seed: int = 0
    """Seed of the data order (and of torch's RNG)."""
    eval_every: int = 200
    """Steps between validation evaluations (0: only at the end)."""
    eval_sequences_per_domain: int = 64
    """Validation sequences per domain at periodic evaluations."""
    final_eval_sequences_per_domain: int | None = 512
    """Validation sequences per domain at the final evaluation (None: all)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (0: only at the end)."""
    log_every: int = 20
    """Steps between printed progress lines."""

    def __post_init__(self) -> None:
        for name in ("tokens", "batch_size", "eval_sequences_per_domain"):
            _positive_int("train", name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"train.{name} {value!r} must be a non-negative integer")
        if self.final_eval_sequences_per_domain is not None:
            _positive_int(
                "train", "final_eval_sequences_per_domain", self.final_eval_sequences_per_domain
            )
        if not self.lr > 0:
            raise ConfigError(f"train.lr {self.lr!r} must be positive")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio {self.min_lr_ratio!r} must lie in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas {self.betas!r} must be two numbers in [0, 1)")
        for name in ("weight_decay", "grad_clip", "load_balance_coef", "z_loss_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} {getattr(self, name)!r} must be >= 0")
        if self.precision not in PRECISIONS:
            raise unknown_choice("train precision", str(self.precision), PRECISIONS)

    def steps(self, n_ctx: int) -> int:
        """Optimiser steps to see ``tokens`` tokens with sequences of ``n_ctx``."""
        return max(1, self.tokens // (self.batch_size * n_ctx))


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CPU, 2 cores, minutes: 5 layers of width 128; MoE with 8 experts of width 256, top-2.
    "tiny": {
        "model": {
            "n_layers": 5,
            "d_model": 128,
            "n_heads": 4,
            "d_mlp": 512,
            "num_experts": 8,
            "experts_per_token": 2,
        },
        "train": {
            "tokens": 2_000_000,  # 488 steps of 32 x 128 tokens
            "batch_size": 32,
            "lr": 3e-3,
            "warmup_steps": 50,
            "load_balance_coef": 0.03,  # per layer; 0.002 left an expert of layer 0 at 1.2%
            "eval_every": 100,
            "checkpoint_every": 100,
            "log_every": 25,
        },
    },
    # GPU: 5 layers of width 512, ~29M active parameters at vocab 8192 (the seed paper's
    # "active-27M" pair used gpt2's vocabulary); 1B tokens.
    "paper": {
        "model": {
            "n_layers": 5,
            "d_model": 512,
            "n_heads": 8,
            "d_mlp": 2048,
            "num_experts": 8,
            "experts_per_token": 2,
        },
        "train": {
            "tokens": 1_000_000_000,
            "batch_size": 256,
            "lr": 1e-3,
            "warmup_steps": 500,
            "eval_every": 500,
            "checkpoint_every": 500,
            "log_every": 50,
            "eval_sequences_per_domain": 128,
            "final_eval_sequences_per_domain": None,
        },
    },
}
"""Named settings: ``model`` and ``train`` overrides of the dataclass defaults."""


def preset(
    name: str,
    arch: str,
    vocab_size: int,
    n_ctx: int,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """The (model, train) configs of preset ``name`` for ``arch`` and the corpus's vocab/context."""
    from crossdiff.config import from_dict

    if name not in PRESETS:
        raise unknown_choice("model preset", name, PRESETS)
    model = {**PRESETS[name]["model"], "arch": arch, "vocab_size": vocab_size, "n_ctx": n_ctx}
    model.update(model_overrides or {})
    train = {**PRESETS[name]["train"], **(train_overrides or {})}
    return from_dict(ModelConfig, model, "model"), from_dict(TrainConfig, train, "train")


def replace(config: Any, **changes: Any) -> Any:
    """A copy of a frozen config with ``changes`` (validated again)."""
    return dataclasses.replace(config, **changes)
