"""The model's forward pass against an eager float64 reference, and its sparse kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.config import TrainConfig
from crossdiff.crosscoder.distributed import Collectives
from crossdiff.crosscoder.train import TrainState, aux_k_loss, sparsity_penalty

from .conftest import small_crosscoder


def batch64(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.randn(n, 12, generator=g) * 3, "B": torch.randn(n, 12, generator=g)}


def reference_forward(model: Crosscoder, batch: dict, k: float) -> torch.Tensor:
    """Eager float64 BatchTopK crosscoder reconstruction, written from the docstring equations."""
    p = {n: t.detach().double() for n, t in model.named_parameters()}
    s = model.input_scale_M.double()
    x = torch.cat([batch["A"].double() * s[0], batch["B"].double() * s[1]], dim=1)
    S = model.cfg.n_shared
    W_dec = torch.cat([p["W_dec_shared_SD"].repeat(1, 2), p["W_dec_excl_XC"]])
    rho = W_dec[:, :12].norm(dim=1) + W_dec[:, 12:].norm(dim=1)
    pre = x @ p["W_enc_CL"] + p["b_enc_L"]
    score = pre.relu() * rho
    kept = torch.zeros_like(score, dtype=torch.bool).view(-1)
    kept[score.view(-1).topk(round(k * x.shape[0])).indices] = True
    f = pre.relu() * kept.view_as(score)
    assert S > 0
    return f @ W_dec + p["b_dec_C"]


def test_forward_matches_float64_reference() -> None:
    model = small_crosscoder()
    batch = batch64()
    model.fit_input_scales_(batch)
    out = model(batch)
    ref = reference_forward(model, batch, model.cfg.k)
    assert out.pattern.rows_N.numel() == model.cfg.k * 32
    torch.testing.assert_close(out.recon_BC.double(), ref, rtol=1e-5, atol=1e-5)


def test_shared_block_is_tied_and_normalises_input() -> None:
    model = small_crosscoder()
    W = model.decoder_weights()
    assert torch.equal(W[:6, :12], W[:6, 12:])
    batch = batch64(256)
    model.fit_input_scales_(batch)
    x = model.concat_inputs(batch)
    for sl in (slice(0, 12), slice(12, 24)):
        assert x[:, sl].pow(2).sum(1).mean().item() == pytest.approx(12, rel=1e-5)


@pytest.mark.parametrize("n_shared", [0, 6])
def test_sparse_kernels_give_the_dense_gradients(n_shared: int) -> None:
    """Loss (reconstruction + aux-k + sparsity) and every gradient agree in float64."""
    grads = {}
    for kernels in ("sparse", "dense"):
        model = small_crosscoder(n_shared=n_shared, sparsity_coeff=0.01).double()
        batch = {k: v.double() for k, v in batch64().items()}
        model.fit_input_scales_(batch)
        out = model(batch, kernels=kernels)
        dead = torch.zeros(48, dtype=torch.bool)
        dead[::3] = True
        aux = aux_k_loss(model, out, dead, 5, Collectives(), kernels)
        assert aux.item() > 0
        loss = (out.x_BC - out.recon_BC).pow(2).sum() / 32 + aux + sparsity_penalty(model, out)
        loss.backward()
        grads[kernels] = {n: p.grad.clone() for n, p in model.named_parameters() if p.numel()}
    for name, g in grads["dense"].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads["sparse"][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_aux_k_gradient_reaches_dead_latents_only_through_aux() -> None:
    model = small_crosscoder(n_shared=0)
    batch = batch64()
    model.fit_input_scales_(batch)
    out = model(batch)
    alive = torch.zeros(48, dtype=torch.bool)
    alive[out.pattern.cols_N] = True
    dead = ~alive
    assert dead.any()
    aux_k_loss(model, out, dead, 4, Collectives()).backward()
    g = model.W_dec_excl_XC.grad.abs().sum(1)
    assert (g[dead] > 0).any() and (g[alive] == 0).all()


def test_batch_topk_keeps_the_global_top_scores_across_tokens() -> None:
    model = small_crosscoder()
    pre = torch.zeros(4, 48)
    pre[0, :10] = torch.arange(10, 0, -1).float()  # token 0 holds the 10 largest
    pre[1, 5] = 0.5
    pre[2] = torch.rand(48, generator=torch.Generator().manual_seed(0)) * 0.3
    model.threshold.fill_(4.0)  # the candidate filter (θ/2 = 2) must not lose exactness
    pattern, t, pre_N = model.batch_topk(pre, 12)
    assert torch.equal(pre_N, pre[pattern.rows_N, pattern.cols_N])
    rho = model.rank_weights()
    score = pre * rho
    expected = set(score.view(-1).topk(12).indices.tolist())
    got = set((pattern.rows_N * 48 + pattern.cols_N).tolist())
    assert got == expected and pattern.rows_N.tolist().count(0) == 10
    assert t == pytest.approx(float(score.view(-1).topk(12).values.min()))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = small_crosscoder(d_models=(12, 20), n_shared=0)
    model.threshold.fill_(0.7)
    model.input_scale_M.copy_(torch.tensor([2.0, 0.5]))
    model.save_pretrained(tmp_path / "cc")
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == ["cfg.json", "model.safetensors"]
    loaded = Crosscoder.from_pretrained(tmp_path / "cc")
    assert loaded.cfg == model.cfg
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_train_state_defaults() -> None:
    assert TrainState().step == 0 and TrainConfig(steps=1).kernels == "sparse"
