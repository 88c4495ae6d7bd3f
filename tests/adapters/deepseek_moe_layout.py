"""A small faithful re-implementation of the original DeepSeekMoE remote-code layout.

deepseek-moe-16b runs as remote code (``modeling_deepseek.py``), which cannot be downloaded here.
Its MoE layer, reproduced below, differs from transformers' own families: ``experts`` is a
``ModuleList`` of gated MLPs, ``gate`` is an ``MoEGate`` returning ``(topk_idx, topk_weight,
aux_loss)`` (softmax scores, unsorted top-k, renormalised iff ``norm_topk_prob``), inference
dispatch sorts tokens by expert and scatter-adds the weighted outputs, ``shared_experts`` is one
MLP ``n_shared_experts`` times as wide, and the first ``first_k_dense_replace`` layers are dense.
Attention, norms and embeddings are Llama's (as in the original), so the model is a
``LlamaForCausalLM`` whose MLPs are swapped; it saves and loads with ``save_pretrained`` /
``from_pretrained`` once :func:`register` has run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.activations import ACT2FN


class DeepseekConfig(LlamaConfig):
    """Llama's config plus DeepSeekMoE's MoE fields."""

    model_type = "deepseek_moe_layout"

    def __init__(
        self,
        n_routed_experts: int = 8,
        num_experts_per_tok: int = 2,
        n_shared_experts: int | None = 2,
        moe_intermediate_size: int = 24,
        first_k_dense_replace: int = 1,
        moe_layer_freq: int = 1,
        norm_topk_prob: bool = False,
        scoring_func: str = "softmax",
        aux_loss_alpha: float = 0.001,
        **kwargs,
    ) -> None:
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_shared_experts = n_shared_experts
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.moe_layer_freq = moe_layer_freq
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        super().__init__(**kwargs)


class DeepseekMLP(nn.Module):
    """``down(act(gate x) · up x)``."""

    def __init__(self, config: DeepseekConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        size = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, size, bias=False)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    """Softmax router returning ``(topk_idx, topk_weight, aux_loss)``."""

    def __init__(self, config: DeepseekConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, hidden_states: torch.Tensor):
        h = hidden_states.shape[-1]
        logits = F.linear(hidden_states.view(-1, h), self.weight, None)  # [T, E]
        scores = logits.softmax(dim=-1)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_idx, topk_weight, None  # aux loss only in training


class DeepseekMoE(nn.Module):
    """Routed experts (ModuleList) plus shared experts, inference dispatch as the original."""

    def __init__(self, config: DeepseekConfig) -> None:
        super().__init__()
        self.config = config
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList(
            DeepseekMLP(config, config.moe_intermediate_size)
            for _ in range(config.n_routed_experts)
        )
        self.gate = MoEGate(config)
        if config.n_shared_experts is not None:
            width = config.moe_intermediate_size * config.n_shared_experts
            self.shared_experts = DeepseekMLP(config, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        identity = hidden_states
        orig_shape = hidden_states.shape
        topk_idx, topk_weight, _ = self.gate(hidden_states)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        y = self.moe_infer(hidden_states, topk_idx.view(-1), topk_weight.view(-1, 1))
        y = y.view(*orig_shape)
        if self.config.n_shared_experts is not None:
            y = y + self.shared_experts(identity)
        return y

    @torch.no_grad()
    def moe_infer(self, x, flat_expert_indices, flat_expert_weights):
        expert_cache = torch.zeros_like(x)
        idxs = flat_expert_indices.argsort()
        tokens_per_expert = flat_expert_indices.bincount().cpu().numpy().cumsum(0)
        token_idxs = idxs // self.num_experts_per_tok
        for i, end_idx in enumerate(tokens_per_expert):
            start_idx = 0 if i == 0 else tokens_per_expert[i - 1]
            if start_idx == end_idx:
                continue
            exp_token_idx = token_idxs[start_idx:end_idx]
            expert_out = self.experts[i](x[exp_token_idx])
            expert_out.mul_(flat_expert_weights[idxs[start_idx:end_idx]])
            expert_cache.scatter_reduce_(
                0, exp_token_idx.view(-1, 1).repeat(1, x.shape[-1]), expert_out, reduce="sum"
            )
        return expert_cache


class DeepseekForCausalLM(LlamaForCausalLM):
    """Llama with DeepSeekMoE blocks in layers ≥ ``first_k_dense_replace``."""

    config_class = DeepseekConfig

    def __init__(self, config: DeepseekConfig) -> None:
        super().__init__(config)
        for index, layer in enumerate(self.model.layers):
            if index >= config.first_k_dense_replace and index % config.moe_layer_freq == 0:
                layer.mlp = DeepseekMoE(config)
            else:
                layer.mlp = DeepseekMLP(config)
        self.post_init()


def register() -> None:
    """Let ``AutoConfig`` / ``AutoModelForCausalLM`` load saved directories of this layout."""
    try:
        AutoConfig.register(DeepseekConfig.model_type, DeepseekConfig)
        AutoModelForCausalLM.register(DeepseekConfig, DeepseekForCausalLM)
    except ValueError:  # already registered
        pass
