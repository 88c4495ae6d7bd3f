"""The MoE view against independent computations, for every MoE family the adapters read.

For each of Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2, DeepSeek-V3, the DeepSeekMoE
ModuleList layout and TransformerLens' native MoE:

- routing equals the model's own ``output_router_logits`` (where it has them) and a float64
  recomputation from the raw router weights with the family's documented rule;
- Σ_k w_k·expert_k + shared equals the block output recorded by plain torch hooks, to 1e-5;
- the top-1-restricted forward changes the block output to exactly w_(1)·expert_(1) + shared (not
  renormalised), or (Σ_k w_k)·expert_(1) + shared with ``renormalise=True``;
- ablating an expert removes exactly its weighted contribution.
"""

from __future__ import annotations

import pytest
import torch

from crossdiff.errors import ConfigError
from tests.adapters.conftest import Case, recording

ATOL = 1e-5
SHARED_CASES = ("qwen2_moe", "deepseek_v2", "deepseek_v3", "deepseek_moe", "hunyuan_v1_moe")
"""Families whose block adds an always-on part (HunYuan-MoE's ``shared_mlp``)."""


def _softmax_top_k(logits: torch.Tensor, k: int, renormalise: bool):
    probs = logits.softmax(-1)
    weights, indices = probs.topk(k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(-1, keepdim=True)
    return indices, weights


def _sparsemixer(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's eval-mode top-2: each pick's weight is a softmax over the scores within a
    relative margin ``2·eps`` of it (the first pick masked out for the second)."""

    def pick(scores: torch.Tensor, reference: torch.Tensor):
        best, index = scores.max(-1, keepdim=True)
        far = (best - reference) / reference.abs().clamp(min=best) > 2 * eps
        return index, scores.masked_fill(far, float("-inf")).softmax(-1).gather(-1, index)

    first, w1 = pick(logits, logits)
    second, w2 = pick(logits.scatter(-1, first, float("-inf")), logits)
    return torch.cat([first, second], -1), torch.cat([w1, w2], -1)


def _best_groups(scores: torch.Tensor, n_group: int, top_groups: int, group_score) -> torch.Tensor:
    """``[T, E]`` mask of the experts in each token's ``top_groups`` best expert groups."""
    T, E = scores.shape
    per_group = group_score(scores.view(T, n_group, E // n_group))  # [T, G]
    best = per_group.topk(top_groups, dim=-1).indices
    mask = torch.zeros_like(per_group, dtype=torch.bool).scatter_(1, best, True)
    return mask[:, :, None].expand(T, n_group, E // n_group).reshape(T, E)


def expected_routing(case: Case, layer: int, x: torch.Tensor):
    """``(logits, indices, weights)`` recomputed in float64 from the raw router weights."""
    mlp = case.mlp(layer)
    x = x.double()
    if case.name == "tl_moe":
        logits = x @ mlp.W_gate.weight.double().T
        return logits, *_softmax_top_k(logits, mlp.experts_per_token, mlp.cfg.norm_topk_prob)
    config = case.model.config
    if case.name == "hunyuan_v1_moe":
        logits = x @ mlp.gate.wg.weight.double().T
        return logits, *_softmax_top_k(logits, config.moe_topk, True)
    router = mlp.router if case.name in ("phimoe", "granitemoe") else mlp.gate
    logits = x @ router.weight.double().T  # [T, E]
    k = config.num_experts_per_tok
    if case.name == "granitemoe":  # softmax over the top-k logits only
        top, indices = logits.topk(k, dim=-1)
        return logits, indices, top.softmax(-1)
    if case.name == "phimoe":
        return logits, *_sparsemixer(logits, config.router_jitter_noise)
    if case.name == "mixtral":
        return logits, *_softmax_top_k(logits, k, True)
    if case.name in ("olmoe", "qwen2_moe", "qwen3_moe", "deepseek_moe"):
        return logits, *_softmax_top_k(logits, k, config.norm_topk_prob)
    if case.name == "deepseek_v2":  # softmax, group-limited greedy top-k, scaled, no renorm
        scores = logits.softmax(-1)
        allowed = _best_groups(scores, config.n_group, config.topk_group, lambda g: g.amax(-1))
        weights, indices = scores.where(allowed, 0.0).topk(k, dim=-1)
        return logits, indices, weights * config.routed_scaling_factor
    if case.name == "deepseek_v3":  # sigmoid; the bias steers the choice, not the weights
        scores = logits.sigmoid()
        choice = scores + mlp.gate.e_score_correction_bias.double()
        top2 = lambda g: g.topk(2, dim=-1).values.sum(-1)  # noqa: E731
        allowed = _best_groups(choice, config.n_group, config.topk_group, top2)
        indices = choice.where(allowed, float("-inf")).topk(k, dim=-1).indices
        weights = scores.gather(1, indices)
        if config.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, indices, weights * config.routed_scaling_factor
    raise KeyError(case.name)


def recorded_blocks(case: Case, tokens: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """Each MoE block's input and output from a plain forward pass with torch hooks."""
    layers = case.adapter.moe_layers()
    with recording({layer: case.mlp(layer) for layer in layers}) as seen, torch.no_grad():
        case.model(tokens)
    return seen


def _sort(indices: torch.Tensor, weights: torch.Tensor):
    order = weights.argsort(-1, descending=True)
    return indices.gather(-1, order), weights.gather(-1, order)


def test_moe_layers_and_sizes(moe_case: Case) -> None:
    adapter = moe_case.adapter
    dense_first = moe_case.name.startswith("deepseek")
    n_layers = len(adapter.sites()) // len({s.name.split(".")[1] for s in adapter.sites()})
    assert adapter.moe_layers() == list(range(1 if dense_first else 0, n_layers))
    for layer in adapter.moe_layers():
        assert 2 <= adapter.top_k(layer) < adapter.n_experts(layer)
    with pytest.raises(ConfigError, match="not an MoE layer"):
        adapter.expert_outputs(torch.zeros(1, 2, dtype=torch.long), n_layers + 5)


def test_routing_matches_independent_computation(moe_case: Case, tokens: torch.Tensor) -> None:
    adapter = moe_case.adapter
    routing = adapter.routing(tokens)
    seen = recorded_blocks(moe_case, tokens)
    assert sorted(routing) == adapter.moe_layers()
    for layer, got in routing.items():
        logits, indices, weights = expected_routing(moe_case, layer, seen[layer]["input"])
        T, K = tokens.numel(), adapter.top_k(layer)
        assert got.topk_indices.shape == got.topk_weights.shape == (T, K)
        assert got.router_logits.shape == (T, adapter.n_experts(layer))
        torch.testing.assert_close(got.router_input, seen[layer]["input"], atol=0, rtol=0)
        torch.testing.assert_close(got.router_logits.double(), logits, atol=ATOL, rtol=0)
        want_indices, want_weights = _sort(indices, weights)
        assert torch.equal(got.topk_indices, want_indices)
        torch.testing.assert_close(got.topk_weights.double(), want_weights, atol=ATOL, rtol=0)
        assert (got.topk_weights[:, :-1] >= got.topk_weights[:, 1:]).all()
    if hasattr(moe_case.model, "config") and moe_case.name != "deepseek_moe":
        with torch.no_grad():
            own = moe_case.model(tokens, output_router_logits=True).router_logits
        assert len(own) == len(routing)
        for layer, logits in zip(adapter.moe_layers(), own, strict=True):
            torch.testing.assert_close(routing[layer].router_logits, logits, atol=1e-6, rtol=0)


def test_weighted_expert_outputs_sum_to_block_output(moe_case: Case, tokens: torch.Tensor) -> None:
    adapter = moe_case.adapter
    seen = recorded_blocks(moe_case, tokens)
    for layer in adapter.moe_layers():
        opened = adapter.expert_outputs(tokens, layer)
        T, K, D = tokens.numel(), adapter.top_k(layer), opened.block_input.shape[-1]
        assert opened.expert_outputs.shape == (T, K, D)
        torch.testing.assert_close(opened.block_input, seen[layer]["input"], atol=0, rtol=0)
        torch.testing.assert_close(opened.block_output, seen[layer]["output"], atol=0, rtol=0)
        assert opened.block_output.abs().mean() > 0.1  # so that 1e-5 is a real tolerance
        has_shared = moe_case.name in SHARED_CASES
        assert (opened.shared_output is not None) == has_shared
        shared = 0 if opened.shared_output is None else opened.shared_output
        total = opened.contribution() + shared
        torch.testing.assert_close(total, opened.block_output, atol=ATOL, rtol=0)
        # each expert's own outputs, on the tokens routed to it, add up to the same total
        routed = torch.zeros_like(total)
        for expert in range(adapter.n_experts(layer)):
            rows, weights, outputs = opened.for_expert(expert)
            assert rows.unique().numel() == rows.numel()
            routed.index_add_(0, rows, weights[:, None].to(outputs.dtype) * outputs)
        torch.testing.assert_close(routed + shared, opened.block_output, atol=ATOL, rtol=0)
        # each slot's output is a different expert's: dropping any one slot breaks the sum
        partial = opened.contribution(K - 1) + shared
        assert (partial - opened.block_output).abs().max() > 1e-3


@pytest.mark.parametrize("renormalise", [False, True])
def test_top1_restricted_forward(moe_case: Case, tokens: torch.Tensor, renormalise: bool) -> None:
    adapter = moe_case.adapter
    layer = adapter.moe_layers()[-1]
    opened = adapter.expert_outputs(tokens, layer)
    weights = opened.routing.topk_weights
    scale = weights.sum(-1) if renormalise else weights[:, 0]  # [T]
    shared = 0 if opened.shared_output is None else opened.shared_output
    expected = scale[:, None] * opened.expert_outputs[:, 0] + shared  # [T, D]

    restricted = adapter.forward_restricted(tokens, layer, keep_top_n=1, renormalise=renormalise)
    assert list(restricted.block_outputs) == [layer]
    got = restricted.block_outputs[layer]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (got - opened.block_output).abs().max() > 1e-3

    # the logits are those of the model with that block output spliced in
    spliced = adapter.logits_with_replacement(
        tokens, f"{layer}.mlp_out", lambda out: expected.reshape(out.shape).to(out.dtype)
    )
    torch.testing.assert_close(restricted.logits, spliced, atol=1e-4, rtol=0)
    assert (restricted.logits - adapter.logits(tokens)).abs().max() > 1e-3


def test_keep_all_is_the_plain_forward(moe_case: Case, tokens: torch.Tensor) -> None:
    adapter = moe_case.adapter
    k = adapter.top_k(adapter.moe_layers()[0])
    restricted = adapter.forward_restricted(tokens, None, keep_top_n=k)
    assert list(restricted.block_outputs) == adapter.moe_layers()
    torch.testing.assert_close(restricted.logits, adapter.logits(tokens), atol=ATOL, rtol=0)


def test_ablating_an_expert_removes_its_contribution(moe_case: Case, tokens: torch.Tensor) -> None:
    adapter = moe_case.adapter
    layer = adapter.moe_layers()[-1]
    opened = adapter.expert_outputs(tokens, layer)
    indices, weights = opened.routing.topk_indices, opened.routing.topk_weights
    expert = int(indices.flatten().mode().values)
    hit = (indices == expert).to(weights.dtype)[..., None]  # [T, K, 1]
    removed = (hit * weights[..., None] * opened.expert_outputs).sum(1)  # [T, D]
    got = adapter.forward_restricted(tokens, layer, ablate_expert=expert).block_outputs[layer]
    torch.testing.assert_close(got, opened.block_output - removed, atol=ATOL, rtol=0)
    assert removed.abs().max() > 1e-3


def test_bad_restriction_is_rejected(moe_case: Case, tokens: torch.Tensor) -> None:
    adapter = moe_case.adapter
    layer = adapter.moe_layers()[0]
    with pytest.raises(ConfigError, match="keep_top_n"):
        adapter.forward_restricted(tokens, layer, keep_top_n=adapter.top_k(layer) + 1)


def test_dense_layers_between_moe_layers_are_not_moe(tokens: torch.Tensor) -> None:
    import transformers

    from crossdiff.adapters import adapt
    from crossdiff.plugins import create_plugin_manager
    from tests.adapters.tiny_models import COMMON

    config = transformers.Qwen2MoeConfig(
        **{**COMMON, "num_hidden_layers": 4},
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        decoder_sparse_step=2,  # MoE in layers 1 and 3 ...
        mlp_only_layers=[3],  # ... but layer 3 forced dense
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    adapter = adapt(model, create_plugin_manager())
    assert adapter.moe_layers() == [1]
    opened = adapter.expert_outputs(tokens, 1)
    total = opened.contribution() + opened.shared_output
    torch.testing.assert_close(total, opened.block_output, atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match=r"MoE layers: \[1\]"):
        adapter.routing(tokens, [3])
