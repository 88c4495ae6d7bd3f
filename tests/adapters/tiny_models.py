"""Tiny random models of every family the adapters support, built offline from configs.

Router weights are redrawn at unit scale (and DeepSeek-V3's choice bias at random) so that routing
is decisive and the choice bias matters; everything else keeps its family's own initialisation.
"""

from __future__ import annotations

import warnings

import torch

from tests.adapters import deepseek_moe_layout

VOCAB = 96
D_MODEL = 32
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": D_MODEL,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.2,
}
DEEPSEEK = {
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "moe_intermediate_size": 24,
    "n_shared_experts": 1,
    "routed_scaling_factor": 1.5,
}

ROUTER_WEIGHTS = ("mlp.gate.weight", "mlp.router.weight", "moe.router.weight", "mlp.gate.wg.weight")
"""Router weights of the tiny models, redrawn at unit scale."""
HF_MOE_CASES = (
    "mixtral",
    "olmoe",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "deepseek_moe",
    "phimoe",
    "granitemoe",
    "hunyuan_v1_moe",
)
"""Every MoE family the Hugging Face adapter reads (HunYuan-MoE: an always-on ``shared_mlp``)."""
HF_DENSE_CASES = ("llama", "gpt2")


def hf_config(case: str):
    """The tiny config of ``case`` (a transformers config object)."""
    import transformers as tf

    experts = {"num_experts_per_tok": 2}
    if case == "mixtral":
        return tf.MixtralConfig(**COMMON, **experts, num_local_experts=4)
    if case == "olmoe":
        return tf.OlmoeConfig(**COMMON, **experts, num_experts=6, norm_topk_prob=False)
    if case == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            **COMMON,
            **experts,
            num_experts=6,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            norm_topk_prob=True,
        )
    if case == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **COMMON, **experts, num_experts=8, moe_intermediate_size=24, norm_topk_prob=True
        )
    grouped = {**DEEPSEEK, "n_group": 2, "topk_group": 1}  # group-limited routing
    if case == "deepseek_v2":
        return tf.DeepseekV2Config(
            **COMMON, **grouped, num_experts_per_tok=2, n_routed_experts=6,
            topk_method="group_limited_greedy",
        )  # fmt: skip
    if case == "deepseek_v3":
        return tf.DeepseekV3Config(
            **COMMON, **grouped, num_experts_per_tok=3, n_routed_experts=8, norm_topk_prob=True
        )
    if case == "deepseek_moe":
        return deepseek_moe_layout.DeepseekConfig(**COMMON, n_routed_experts=6)
    if case == "phimoe":  # router named ``router``, sparsemixer top-2
        return tf.PhimoeConfig(**COMMON, **experts, num_local_experts=4)
    if case == "granitemoe":  # router named ``router``, block named ``block_sparse_moe``
        return tf.GraniteMoeConfig(**COMMON, **experts, num_local_experts=5)
    if case == "hunyuan_v1_moe":  # an always-on ``shared_mlp`` inside the block
        return tf.HunYuanMoEV1Config(**COMMON, num_experts=4, moe_topk=2, head_dim=8)
    if case == "granitemoeshared":  # ``shared_mlp`` BESIDE the block: refused
        return tf.GraniteMoeSharedConfig(
            **COMMON, **experts, num_local_experts=4, shared_intermediate_size=40
        )
    if case == "llama":
        return tf.LlamaConfig(**COMMON)
    if case == "gpt2":
        return tf.GPT2Config(
            vocab_size=VOCAB, n_embd=D_MODEL, n_layer=2, n_head=4, n_positions=64,
            initializer_range=0.2, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
    raise KeyError(case)


def hf_model(case: str, seed: int = 0):
    """A tiny random transformers causal LM of family ``case``, in eval mode."""
    from transformers import AutoModelForCausalLM

    deepseek_moe_layout.register()
    torch.manual_seed(seed)
    config = hf_config(case)
    if case == "deepseek_moe":
        model = deepseek_moe_layout.DeepseekForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_config(config, experts_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(ROUTER_WEIGHTS):
                param.normal_(0.0, 1.0)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.3)
    return model.eval()


def tl_model(moe: bool, seed: int = 0):
    """A tiny HookedTransformer: native MoE (4 experts, top 2, gated, renormalised) or dense."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    extra = {"num_experts": 4, "experts_per_token": 2, "gated_mlp": True, "norm_topk_prob": True}
    extra = extra if moe else {}
    config = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_ctx=64,
        d_head=8,
        n_heads=4,
        d_mlp=48,
        d_vocab=VOCAB,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        seed=seed,
        **extra,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer is still supported
        model = HookedTransformer(config).eval()
    if moe:
        with torch.no_grad():
            for block in model.blocks:
                block.mlp.W_gate.weight.normal_(0.0, 1.0)
    return model


def word_tokenizer(words: list[str]):
    """A whitespace word-level fast tokenizer with ``words`` as its vocabulary, in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = {"eos_token": "<eos>"} if "<eos>" in words else {}
    return PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", **eos)
