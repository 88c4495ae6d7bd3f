"""TransformerLens configs and modules for the in-repo dense and MoE models."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from crossdiff.models.config import ModelConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig


def hooked_config(config: ModelConfig) -> HookedTransformerConfig:
    """The ``HookedTransformerConfig`` of ``config``.

    Both archs share attention (rotary by default), RMSNorm and gated SiLU MLPs; the MoE sets
    ``num_experts``/``experts_per_token`` and an expert width of ``d_mlp / k``.
    """
    from transformer_lens import HookedTransformerConfig

    moe = config.arch == "moe"
    kwargs = {
        "n_layers": config.n_layers,
        "d_model": config.d_model,
        "n_heads": config.n_heads,
        "d_head": config.head_dim,
        "d_mlp": config.expert_width,
        "d_vocab": config.vocab_size,
        "n_ctx": config.n_ctx,
        "act_fn": config.act_fn,
        "gated_mlp": True,
        "normalization_type": "RMS",
        "final_rms": True,
        "positional_embedding_type": config.positional_embedding_type,
        "original_architecture": "crossdiff-moe" if moe else "crossdiff-dense",
        "model_name": f"crossdiff-{config.arch}",
        "tokenizer_prepends_bos": False,
        "default_prepend_bos": False,
        "seed": config.seed,
    }
    if config.positional_embedding_type == "rotary":
        kwargs["rotary_dim"] = config.head_dim
    if moe:
        kwargs.update(
            num_experts=config.num_experts,
            experts_per_token=config.experts_per_token,
            norm_topk_prob=config.norm_topk_prob,
        )
    return HookedTransformerConfig(**kwargs)


def build_model(config: ModelConfig, device: str = "cpu") -> HookedTransformer:
    """A freshly initialised ``HookedTransformer`` of ``config`` (seeded by ``config.seed``).

    The global torch RNG is re-seeded from ``config.seed`` and then restored, so building a model
    does not disturb the caller's random state.
    """
    import torch
    from transformer_lens import HookedTransformer

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(config.seed)
        cfg = hooked_config(config)
        cfg.seed = None  # seeded above; TL's own seeding would also reset numpy/random globally
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
            model = HookedTransformer(cfg, move_to_device=False)
    finally:
        torch.random.set_rng_state(state)
    return model.to(device, print_details=False)
