"""aux-k against an eager float64 reference written from its formula, on every code path.

    loss = ‖e − ê‖² / Σ_t ‖e_t − ē‖² · min(n_dead / aux_k, 1),  e = x̃ − x̂̃ (detached),
    ê_t  = Σ_{i in top-aux_k dead latents of token t by pre} ReLU(pre_ti) · d_i   (no decoder bias)

Paths: every path the measured rule (:class:`AuxPathRule`) can choose, each case forced on both:
dense products over the dead sub-dictionary (with and without a per-token top-k) and the sparse
kernels (with a top-k, all chosen positive or some not, and without one when no token has more
than aux_k positive dead pre-activations); the dense reference kernels; and bf16.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from crossdiff.crosscoder.aux_k import AuxPathRule, aux_k_loss
from crossdiff.crosscoder.distributed import Collectives
from tests.devices import DEVICES

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
    "topk": (slice(None, None, 3), 5, 0.0),
    "all-dead-chosen": (slice(None, None, 3), 16, 0.0),
    "aux_k-above-n_dead": (slice(None, None, 3), 20, 0.0),
    "topk-some-chosen-negative": (slice(2, None), 4, -0.2),
    "topk-all-chosen-positive": (slice(2, None), 4, 0.0),
    "few-positive": (slice(2, None), 6, -0.3),
}
PATHS = [("sparse", "sparse"), ("sparse", "dense"), ("dense", None)]  # (kernels, aux path)


@pytest.mark.parametrize(("kernels", "path"), PATHS)
@pytest.mark.parametrize("case", list(CASES))
def test_aux_k_equals_the_float64_reference_with_gradients(
    case: str, kernels: str, path: str | None
) -> None:
    dead_slice, aux_k, shift = CASES[case]
    model = small_crosscoder(n_shared=6).double()
    data = {k: v.double() for k, v in batch().items()}
    model.fit_input_scales_(data)
    dead = torch.zeros(L, dtype=torch.bool)
    dead[dead_slice] = True
    with torch.no_grad():
        model.b_enc_L[dead] += shift
    out = model(data, kernels=kernels)
    e_BC = (out.x_BC - out.recon_BC).detach()
    pre_dead = out.pre_BL[:, dead]
    positives = (pre_dead > 0).sum(1)
    kth = pre_dead.topk(min(aux_k, int(dead.sum())), dim=1).values[:, -1]
    if case == "few-positive":  # the sparse path needs no top-k
        assert int(positives.max()) <= aux_k and int(positives.sum()) > 0
    elif case.startswith("topk"):
        assert int(positives.max()) > aux_k
    if case == "topk-some-chosen-negative":
        assert (kth <= 0).any() and (kth > 0).any()
    elif case == "topk-all-chosen-positive":
        assert (kth > 0).all()

    def loss(o):
        return aux_k_loss(model, o, dead, aux_k, Collectives(), kernels, path=path)

    got = grads_of(model, loss(out))
    value = loss(model(data, kernels=kernels))
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
    for aux_k, path in itertools.product((4, 12), ("sparse", "dense")):
        out = model(data)
        value = aux_k_loss(model, out, dead, aux_k, Collectives(), path=path)
        e_BC = (out.x_BC - out.recon_BC).detach()
        ref = reference_aux(model, out.x_BC, e_BC, dead, aux_k)
        assert value.dtype == torch.bfloat16
        assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=0.03)


def test_no_dead_latents_no_loss() -> None:
    model = small_crosscoder()
    out = model(batch())
    assert float(aux_k_loss(model, out, torch.zeros(L, dtype=torch.bool), 4, Collectives())) == 0


def test_the_path_rule_is_measured_once_recorded_and_decides_by_the_share(monkeypatch) -> None:
    import crossdiff.crosscoder.aux_k as aux_module

    model = small_crosscoder()
    data = batch(64)
    model.fit_input_scales_(data)
    dead = torch.zeros(L, dtype=torch.bool)
    dead[2:] = True  # 46 dead, aux_k 4: share 11.5
    rule = AuxPathRule()
    aux_k_loss(model, model(data), dead, 4, Collectives(), rule=rule)
    assert rule.dense_share is None and rule.last_path == "dense"  # small product: unmeasured
    monkeypatch.setattr(aux_module, "SMALL_WORK", 0)
    aux_k_loss(model, model(data), dead, 4, Collectives(), rule=rule)
    share = rule.dense_share
    assert share is not None and share >= 1.0
    assert rule.timings_ms["dense_ms"] > 0 and rule.timings_ms["sparse_ms"] > 0
    assert rule.timings_ms["n_dead"] == 46 and rule.timings_ms["kk"] == 4
    assert rule.last_path == ("dense" if share * 4 >= 46 else "sparse")
    assert "measured dense" in rule.describe()
    # measured once: a second step keeps the share
    aux_k_loss(model, model(data), dead, 4, Collectives(), rule=rule)
    assert rule.dense_share == share
    # the rule decides by the share, on both sides of it
    fixed = AuxPathRule(dense_share=3.0)
    assert fixed.path(12, 4) == "dense" and fixed.path(13, 4) == "sparse"
    assert AuxPathRule(measure=False).path(16, 4) == "dense"
    assert AuxPathRule(measure=False).path(17, 4) == "sparse"


def test_the_measured_share_is_saved_with_the_checkpoint_and_restored(
    tmp_path, monkeypatch
) -> None:
    import json

    import crossdiff.crosscoder.aux_k as aux_module
    from crossdiff.crosscoder import TrainConfig
    from crossdiff.crosscoder.train import load_checkpoint, make_optimizer, train

    from .conftest import planted

    monkeypatch.setattr(aux_module, "SMALL_WORK", 0)
    cfg = TrainConfig(steps=6, lr=3e-3, warmup_steps=2, dead_tokens=64, aux_k=6)
    model = small_crosscoder()
    result = train(model, planted(noise=0.05).batches(64, 6, seed=1), cfg, tmp_path)
    assert any(s.aux > 0 for s in result.history)  # aux-k ran, so the rule was measured
    saved = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert saved["aux_dense_share"] is not None and saved["aux_dense_share"] >= 1.0
    fresh = small_crosscoder()
    state = load_checkpoint(tmp_path, fresh, make_optimizer(fresh, cfg))
    assert state is not None and state.aux_rule.dense_share == saved["aux_dense_share"]
    assert "restored" in state.aux_rule.describe()


@pytest.mark.parametrize("device", DEVICES)
def test_every_path_and_the_measured_rule_on_device_equal_the_float64_reference(
    device: str, monkeypatch
) -> None:
    import crossdiff.crosscoder.aux_k as aux_module

    monkeypatch.setattr(aux_module, "SMALL_WORK", 0)  # measure even at this size
    model = small_crosscoder(n_shared=6).double()
    data = {k: v.double() for k, v in batch().items()}
    model.fit_input_scales_(data)
    dead = torch.zeros(L, dtype=torch.bool)
    dead[2:] = True
    out = model(data)
    ref = reference_aux(model, out.x_BC, (out.x_BC - out.recon_BC).detach(), dead, 4)
    ref_grads = grads_of(model, ref)
    model.to(device)
    rule = AuxPathRule()
    for path in ("sparse", "dense", None):  # None: the measured rule's choice
        on_device = {k: v.to(device) for k, v in data.items()}
        value = aux_k_loss(
            model, model(on_device), dead.to(device), 4, Collectives(), rule=rule, path=path
        )
        got = grads_of(model, value)
        torch.testing.assert_close(value.detach().cpu(), ref.detach(), rtol=1e-10, atol=0)
        for name, g in ref_grads.items():
            torch.testing.assert_close(got[name].cpu(), g, rtol=1e-9, atol=1e-12, msg=name)
    assert rule.dense_share is not None and rule.last_path in ("sparse", "dense")
