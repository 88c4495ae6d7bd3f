"""aux-k against an eager float64 reference written from its formula, on every code path.

    loss = ‖e − ê‖² / Σ_t ‖e_t − ē‖² · min(n_dead / aux_k, 1),  e = x̃ − x̂̃ (detached),
    ê_t  = Σ_{i in top-aux_k dead latents of token t by pre} ReLU(pre_ti) · d_i   (no decoder bias)

Paths: dense products over the dead sub-dictionary (n_dead ≤ 4·aux_k, with and without a
per-token top-k), sparse kernels (with a top-k, and without one when no token has more than
aux_k positive dead pre-activations), the dense reference kernels, and bf16.
"""

from __future__ import annotations

import pytest
import torch

from crossdiff.crosscoder.distributed import Collectives
from crossdiff.crosscoder.train import AUX_DENSE_SHARE, aux_k_loss

from .conftest import small_crosscoder

L = 48


def batch(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.randn(n, 12, generator=g) * 3, "B": torch.randn(n, 12, generator=g)}


def reference_aux(model, x_BC: torch.Tensor, e_BC: torch.Tensor, dead_L, aux_k: int):
    """The formula, token by token, in float64 with autograd through the parameters."""
    p = dict(model.named_parameters())
    W_dec = torch.cat([p["W_dec_shared_SD"].repeat(1, 2), p["W_dec_excl_XC"]])
    x, e = x_BC.double(), e_BC.double()
    pre = x @ p["W_enc_CL"].double() + p["b_enc_L"].double()
    dead = dead_L.nonzero()[:, 0]
    kk = min(aux_k, dead.numel())
    rows = []
    for t in range(x.shape[0]):
        chosen = dead[pre[t, dead].detach().argsort(descending=True)[:kk]]
        rows.append(pre[t, chosen].relu() @ W_dec.double()[chosen])
    e_hat = torch.stack(rows)
    denominator = (e - e.mean(0)).pow(2).sum()
    return (e - e_hat).pow(2).sum() / denominator * min(dead.numel() / aux_k, 1.0)


def grads_of(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).double().clone()
        for n, p in model.named_parameters()
    }


CASES = {  # name: (dead latents, aux_k, shift of the dead latents' encoder bias)
    "dense-subdict-topk": (slice(None, None, 3), 5, 0.0),
    "dense-subdict-all": (slice(None, None, 3), 16, 0.0),
    "aux_k-above-n_dead": (slice(None, None, 3), 20, 0.0),
    "sparse-topk": (slice(2, None), 4, 0.0),
    "sparse-few-positive": (slice(2, None), 6, -0.3),
}


@pytest.mark.parametrize("kernels", ["sparse", "dense"])
@pytest.mark.parametrize("case", list(CASES))
def test_aux_k_equals_the_float64_reference_with_gradients(case: str, kernels: str) -> None:
    dead_slice, aux_k, shift = CASES[case]
    model = small_crosscoder(n_shared=6).double()
    data = {k: v.double() for k, v in batch().items()}
    model.fit_input_scales_(data)
    dead = torch.zeros(L, dtype=torch.bool)
    dead[dead_slice] = True
    with torch.no_grad():
        model.b_enc_L[dead] += shift
    n_dead = int(dead.sum())
    if case.startswith("sparse"):
        assert n_dead > AUX_DENSE_SHARE * min(aux_k, n_dead)  # the path this case is about
    else:
        assert n_dead <= AUX_DENSE_SHARE * min(aux_k, n_dead)
    out = model(data, kernels=kernels)
    e_BC = (out.x_BC - out.recon_BC).detach()
    positives = (out.pre_BL[:, dead] > 0).sum(1)
    if case == "sparse-few-positive":
        assert int(positives.max()) <= aux_k and int(positives.sum()) > 0
    elif case == "sparse-topk":
        assert int(positives.max()) > aux_k
    got = grads_of(model, aux_k_loss(model, out, dead, aux_k, Collectives(), kernels))
    value = aux_k_loss(model, model(data, kernels=kernels), dead, aux_k, Collectives(), kernels)
    ref_loss = reference_aux(model, out.x_BC, e_BC, dead, aux_k)
    torch.testing.assert_close(value.detach(), ref_loss.detach(), rtol=1e-10, atol=0)
    ref = grads_of(model, ref_loss)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12, msg=name)
    # the gradient reaches dead latents only: their decoder rows and encoder columns
    g_dec = got["W_dec_excl_XC"].abs().sum(1)
    g_enc = got["W_enc_CL"].abs().sum(0)
    free_dead = dead[6:]
    assert (g_dec[free_dead] > 0).any() and (g_dec[~free_dead] == 0).all()
    assert (g_enc[dead] > 0).any() and (g_enc[~dead] == 0).all()
    assert got["b_dec_C"].abs().max() == 0


def test_aux_k_in_bf16_is_the_float64_value_to_bf16_precision() -> None:
    model = small_crosscoder(dtype="bfloat16")
    data = batch()
    model.fit_input_scales_(data)
    dead = torch.zeros(L, dtype=torch.bool)
    dead[2:] = True
    for aux_k in (4, 12):  # sparse and dense sub-dictionary paths
        out = model(data)
        value = aux_k_loss(model, out, dead, aux_k, Collectives())
        e_BC = (out.x_BC - out.recon_BC).detach()
        ref = reference_aux(model, out.x_BC, e_BC, dead, aux_k)
        assert value.dtype == torch.bfloat16
        assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=0.03)


def test_no_dead_latents_no_loss() -> None:
    model = small_crosscoder()
    out = model(batch())
    assert float(aux_k_loss(model, out, torch.zeros(L, dtype=torch.bool), 4, Collectives())) == 0
