"""Independent float64 recomputation of an MoE layer from the raw weights of each tiny model.

Routing comes from ``tests.adapters.test_moe_view.expected_routing`` (the family's documented
rule applied to the router weights); each chosen expert's output is recomputed here from its own
weight tensors, never through the adapter or the block's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.adapters.conftest import Case, recording
from tests.adapters.test_moe_view import expected_routing


def expert_output(case: Case, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
    """``x [N, D]`` float64 -> ``[N, D]`` expert ``expert``'s unweighted output, from weights."""
    mlp = case.mlp(layer)
    x = x.double()
    if case.name == "tl_moe":
        e = mlp.experts[expert]
        gate, up = x @ e.W_gate.weight.double().T, x @ e.W_in.weight.double().T
        return (e.act_fn(gate) * up) @ e.W_out.weight.double().T
    if case.name == "deepseek_moe":
        e = mlp.experts[expert]
        gate, up = x @ e.gate_proj.weight.double().T, x @ e.up_proj.weight.double().T
        return (e.act_fn(gate) * up) @ e.down_proj.weight.double().T
    experts = mlp.experts
    gate, up = F.linear(x, experts.gate_up_proj[expert].double()).chunk(2, dim=-1)
    return F.linear(experts.act_fn(gate) * up, experts.down_proj[expert].double())


def decoder_layer(case: Case, layer: int) -> torch.nn.Module:
    """The whole block ``layer`` (its output is the residual stream after it)."""
    if case.name.startswith("tl_"):
        return case.model.blocks[layer]
    return case.model.model.layers[layer]


def direct_layer(case: Case, layer: int, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 ``indices, weights [T, K]``, ``outputs [T, K, D]`` (sorted by weight, largest
    first), and the recorded ``block_output`` and ``resid_post`` ``[T, D]`` of a plain forward."""
    modules = {0: case.mlp(layer), 1: decoder_layer(case, layer)}
    with recording(modules) as seen, torch.no_grad():
        case.model(tokens)
    x = seen[0]["input"]
    with torch.no_grad():
        _, indices, weights = expected_routing(case, layer, x)
    order = weights.argsort(-1, descending=True)
    indices, weights = indices.gather(-1, order), weights.gather(-1, order)
    outputs = torch.zeros(*indices.shape, x.shape[-1], dtype=torch.float64)
    for expert in indices.unique().tolist():
        rows, slots = torch.where(indices == expert)
        with torch.no_grad():
            outputs[rows, slots] = expert_output(case, layer, expert, x[rows])
    return {
        "indices": indices,
        "weights": weights,
        "outputs": outputs,
        "block_output": seen[0]["output"].double(),
        "resid_post": seen[1]["output"].double(),
    }


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the cosine of ``a [T, D]`` and ``b [T, D]`` (float64)."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).mean())
