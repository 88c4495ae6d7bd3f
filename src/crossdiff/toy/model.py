"""The batched toy model: M independent (MoE) toy autoencoders evaluated with batched matmuls.

    h_e = W_e x                                  W_e ∈ R^{m×n} (tied: the decoder is W_eᵀ)
    p = softmax(R x)                             R ∈ R^{E×n}, a linear router over the input
    w = top-k of p                               (zero for the other experts), Switch-style,
                                                  or renormalised over the k (Mixtral), per model
    x̂ = Σ_{e∈topk} w_e · ReLU(W_eᵀ h_e + b_e)

The dense toy model x̂ = ReLU(WᵀW x + b) is the case E = k = 1 (the softmax of one logit is 1).
Models with fewer experts than the batch's widest are padded: their extra experts get a router
logit of −∞ (probability exactly 0, never chosen, no gradient), and slots beyond a model's own k
get weight 0, so each model computes what it would compute alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

ALIGNED_ROUTER_SCALE = 4.0
"""Router weight on an expert's own feature group under the ``aligned`` initialisation."""


@dataclass
class ToyParams:
    """The weights of M toy models with the same n and m (leaf tensors, trained in place)."""

    W_MEHN: torch.Tensor
    """Each expert's tied weights (experts beyond a model's own count are padding)."""
    b_MEN: torch.Tensor
    """Each expert's output bias."""
    R_MEN: torch.Tensor
    """Router weights (logits R x)."""
    experts_M: torch.Tensor
    """Each model's number of experts E (long)."""
    k_M: torch.Tensor
    """Each model's active experts per sample (long)."""
    renormalise_M: torch.Tensor
    """Per model (bool): renormalise the top-k weights over the k (else keep the softmax
    probabilities, Switch-style)."""

    def tensors(self) -> list[torch.Tensor]:
        """The trainable tensors."""
        return [self.W_MEHN, self.b_MEN, self.R_MEN]

    def detached(self) -> ToyParams:
        """The same weights, detached from autograd."""
        return ToyParams(
            *(t.detach() for t in self.tensors()), self.experts_M, self.k_M, self.renormalise_M
        )


@dataclass(frozen=True)
class ToyForward:
    """What a forward pass of the batched toy model returns."""

    x_hat_MBN: torch.Tensor
    """Reconstructions."""
    probs_MBE: torch.Tensor
    """Router softmax over all experts (before top-k; 0 for padding)."""
    gates_MBE: torch.Tensor
    """The top-k weights (softmax probabilities or renormalised), zero outside the top-k."""


def forward(params: ToyParams, x_MBN: torch.Tensor) -> ToyForward:
    """Run every model on its own batch.

    Renormalised weights are computed as the softmax of the chosen experts' logits (equal to
    p_e / Σ_chosen p_j), so that at k = 1 the weight is exactly 1 with a gradient of exactly 0:
    the quotient p/p would leave a roundoff gradient (~1e-8) that Adam, which divides by the
    gradient's own scale, turns into full-size random steps of the router.
    """
    W_MEHN, b_MEN = params.W_MEHN, params.b_MEN
    h_MBEH = torch.einsum("mbn,mehn->mbeh", x_MBN, W_MEHN)
    out_MBEN = torch.relu(torch.einsum("mbeh,mehn->mben", h_MBEH, W_MEHN) + b_MEN[:, None])
    E = W_MEHN.shape[1]
    if E == 1:  # every model dense: the softmax of one logit is 1, skip the router
        gates_MBE = torch.ones(out_MBEN.shape[:3], dtype=x_MBN.dtype, device=x_MBN.device)
        return ToyForward(out_MBEN[:, :, 0], gates_MBE, gates_MBE)
    logits_MBE = torch.einsum("mbn,men->mbe", x_MBN, params.R_MEN)
    padding_M1E = torch.arange(E, device=x_MBN.device) >= params.experts_M[:, None, None]
    logits_MBE = logits_MBE.masked_fill(padding_M1E, -math.inf)
    probs_MBE = torch.softmax(logits_MBE, dim=-1)
    k_max = int(params.k_M.max())
    top_MBK, index_MBK = probs_MBE.topk(k_max, dim=-1)
    kept_M1K = torch.arange(k_max, device=x_MBN.device) < params.k_M[:, None, None]
    top_MBK = top_MBK * kept_M1K
    if bool(params.renormalise_M.any()):
        chosen_MBK = logits_MBE.gather(-1, index_MBK).masked_fill(~kept_M1K, -math.inf)
        renormalised_MBK = torch.softmax(chosen_MBK, dim=-1)
        top_MBK = torch.where(params.renormalise_M[:, None, None], renormalised_MBK, top_MBK)
    gates_MBE = torch.zeros_like(probs_MBE).scatter(-1, index_MBK, top_MBK)
    x_hat_MBN = torch.einsum("mbe,mben->mbn", gates_MBE, out_MBEN)
    return ToyForward(x_hat_MBN, probs_MBE, gates_MBE)


def expert_generator(seed: int, expert: int, stream: int = 0) -> torch.Generator:
    """The generator of one expert's initial weights (the same whatever else is in the batch)."""
    return torch.Generator().manual_seed((int(seed) << 20) + (stream << 16) + expert)


def init_params(
    seeds: Sequence[int],
    experts: Sequence[int],
    ks: Sequence[int],
    inits: Sequence[str],
    n_features: int,
    d_hidden: int,
    group_size: int = 2,
    device: torch.device | str = "cpu",
    renormalise: bool | Sequence[bool] = True,
) -> ToyParams:
    """Initial weights of one model per entry, padded to the most experts.

    Expert e of a model with seed s draws W_e (Xavier normal, std √(2/(m+n))) and its router row
    (normal, std 1/√n) from ``expert_generator(s, e)``; b = 0. ``aligned`` sets router row e to
    ``ALIGNED_ROUTER_SCALE`` on the features of groups e, e+E, e+2E… (groups of ``group_size``
    consecutive features) and 0 elsewhere. ``dense`` starts as ``random``; the trainer then
    overwrites W and b (see ``crossdiff.toy.train``). ``renormalise``: one flag for every model
    or one per model.
    """
    if isinstance(renormalise, bool):
        renormalise = [renormalise] * len(seeds)
    E_max = max(experts)
    std = math.sqrt(2 / (d_hidden + n_features))
    W_MEHN = torch.zeros(len(seeds), E_max, d_hidden, n_features)
    R_MEN = torch.zeros(len(seeds), E_max, n_features)
    group_N = torch.arange(n_features) // group_size
    for m, (seed, E, init) in enumerate(zip(seeds, experts, inits, strict=True)):
        for e in range(E):
            generator = expert_generator(seed, e)
            W_MEHN[m, e] = torch.randn((d_hidden, n_features), generator=generator) * std
            R_MEN[m, e] = torch.randn(n_features, generator=generator) / math.sqrt(n_features)
            if init == "aligned":
                R_MEN[m, e] = ALIGNED_ROUTER_SCALE * (group_N % E == e).float()
    return ToyParams(
        W_MEHN.to(device).requires_grad_(),
        torch.zeros((len(seeds), E_max, n_features), device=device).requires_grad_(),
        R_MEN.to(device).requires_grad_(),
        torch.tensor(list(experts), device=device),
        torch.tensor(list(ks), device=device),
        torch.tensor([bool(r) for r in renormalise], device=device),
    )
