"""Held-out metrics against independent float64 computations, and the inference threshold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from crossdiff.adapters import ModelAdapter, Site
from crossdiff.crosscoder import Crosscoder, TrainConfig
from crossdiff.crosscoder.evaluate import calibrate_threshold_, ce_recovered, evaluate
from crossdiff.crosscoder.synthetic import PlantedConfig, PlantedFeatures
from crossdiff.crosscoder.train import train

from .conftest import planted, small_crosscoder


def numpy_reference(model: Crosscoder, xs: dict[str, np.ndarray]) -> dict[str, object]:
    """FVE, L0 and dead fraction computed from the weights with numpy float64."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    dims, names = model.cfg.d_models, model.cfg.models
    S = model.cfg.n_shared
    W_dec = sd["W_dec_excl_XC"]
    if S:
        W_dec = np.concatenate([np.tile(sd["W_dec_shared_SD"], (1, len(names))), W_dec])
    cuts = np.cumsum((0, *dims))
    x = np.concatenate([xs[n] * sd["input_scale_M"][i] for i, n in enumerate(names)], axis=1)
    pre = x @ sd["W_enc_CL"] + sd["b_enc_L"]
    rho = sum(np.linalg.norm(W_dec[:, cuts[i] : cuts[i + 1]], axis=1) for i in range(len(names)))
    f = np.maximum(pre, 0) * (np.maximum(pre, 0) * rho > sd["threshold"])
    y = f @ W_dec + sd["b_dec_C"]
    out, num, den = {}, 0.0, 0.0
    for i, n in enumerate(names):
        s = sd["input_scale_M"][i]
        recon = y[:, cuts[i] : cuts[i + 1]] / s
        sse = ((xs[n] - recon) ** 2).sum()  # plain squared error, not the error's variance
        sst = ((xs[n] - xs[n].mean(axis=0)) ** 2).sum()
        out[n] = 1 - sse / sst
        num, den = num + s**2 * sse, den + s**2 * sst  # pooled: the normalised space
    return {"fve": out, "pooled": 1 - num / den, "l0": (f > 0).sum(1).mean(),
            "dead": 1 - (f > 0).any(0).mean()}  # fmt: skip


@pytest.mark.parametrize(("dims", "n_shared"), [((12, 20), 0), ((12, 12), 6)])
def test_fve_l0_dead_match_numpy_float64(dims: tuple[int, int], n_shared: int) -> None:
    source = planted(d=dims, noise=0.1)
    model = small_crosscoder(d_models=dims, n_shared=n_shared)
    train(model, source.batches(64, 100, seed=0), TrainConfig(steps=100, lr=3e-3, warmup_steps=5))
    held_out = list(source.batches(100, 5, seed=9))
    got = evaluate(model, held_out)
    xs = {n: torch.cat([b[n] for b in held_out]).double().numpy() for n in model.cfg.models}
    ref = numpy_reference(model, xs)
    assert got.n_tokens == 500
    for n in model.cfg.models:
        assert got.fve[n] == pytest.approx(ref["fve"][n], abs=1e-6)
        assert 0 < got.fve[n] < 1
    assert got.fve_pooled == pytest.approx(ref["pooled"], abs=1e-6)
    assert got.l0 == pytest.approx(ref["l0"], abs=1e-9)
    assert got.dead_fraction == pytest.approx(ref["dead"], abs=1e-9)
    assert evaluate(model, held_out, max_tokens=150).n_tokens == 150


def test_fve_sees_a_constant_offset_in_the_reconstruction() -> None:
    """Shifting one model's decoder bias adds a constant offset to its reconstruction: the FVE
    must drop by the offset's share (plain squared error), as a float64 recomputation says, while
    the variance of the error (the old formula) would not move at all."""
    source = planted(d=(12, 12), noise=0.1)
    model = small_crosscoder(d_models=(12, 12), n_shared=4)
    train(model, source.batches(64, 100, seed=0), TrainConfig(steps=100, lr=3e-3, warmup_steps=5))
    held_out = list(source.batches(100, 5, seed=9))
    before = evaluate(model, held_out)
    with torch.no_grad():
        model.b_dec_C[:12] += 0.5
    got = evaluate(model, held_out)
    xs = {n: torch.cat([b[n] for b in held_out]).double().numpy() for n in model.cfg.models}
    ref = numpy_reference(model, xs)
    assert got.fve["A"] == pytest.approx(ref["fve"]["A"], abs=1e-6)
    assert got.fve_pooled == pytest.approx(ref["pooled"], abs=1e-6)
    assert got.fve["B"] == pytest.approx(before.fve["B"], abs=1e-9)
    assert got.fve["A"] < before.fve["A"] - 0.05  # the offset is not forgiven


def test_training_log_and_evaluation_report_the_same_fve_on_the_same_batch() -> None:
    """With the inference threshold just under the batch's BatchTopK threshold, evaluation
    selects the latents the training step selects: their FVEs (pooled, normalised) must agree."""
    from crossdiff.crosscoder.distributed import Collectives
    from crossdiff.crosscoder.train import TrainState, make_optimizer, train_step

    source = planted(d=(12, 20), noise=0.1)
    model = small_crosscoder(d_models=(12, 20), n_shared=0)
    train(model, source.batches(64, 60, seed=0), TrainConfig(steps=60, lr=3e-3, warmup_steps=5))
    batch = next(iter(source.batches(256, 1, seed=5)))
    with torch.no_grad():
        model.b_dec_C[:12] += 0.3  # an offset, so that the two old formulas would disagree
    t = torch.tensor(model(batch).batch_threshold, dtype=torch.float32)
    model.threshold.fill_(float(t.nextafter(torch.tensor(0.0))))
    evaluated = evaluate(model, [batch])
    assert evaluated.l0 == pytest.approx(model.cfg.k, abs=1e-9)  # the same selection
    cfg = TrainConfig(steps=1, lr=1e-3, warmup_steps=0)
    state = TrainState(tokens_since_fired=torch.zeros(model.cfg.dict_size, dtype=torch.long))
    stats = train_step(model, make_optimizer(model, cfg), batch, state, cfg, Collectives())
    assert stats.fve == pytest.approx(evaluated.fve_pooled, abs=1e-5)


def test_fve_is_not_the_per_token_average() -> None:
    """Reconstructing every token by the mean explains no variance: FVE 0 exactly, while the
    per-token ratio average (the biased legacy form) would say about 0.96 here."""
    model = small_crosscoder(n_shared=0)
    g = torch.Generator().manual_seed(0)
    data = [{"A": torch.randn(500, 12, generator=g) + 5, "B": torch.randn(500, 12, generator=g)}]
    model.fit_input_scales_(data[0])  # b_dec = the batch mean
    model.threshold.fill_(1e9)  # no latent fires
    got = evaluate(model, data)
    assert got.l0 == 0 and got.dead_fraction == 1
    assert got.fve["A"] == pytest.approx(0, abs=1e-9) and got.fve_pooled == pytest.approx(
        0, abs=1e-9
    )
    x = data[0]["A"].double()
    e = x - x.mean(0)
    legacy = 1 - (e.pow(2).sum(1) / x.pow(2).sum(1)).mean()
    assert float(legacy) > 0.9


def test_inference_l0_with_the_calibrated_threshold_is_close_to_k() -> None:
    source = PlantedFeatures(
        PlantedConfig(
            d_models=(24, 24),
            n_shared=40,
            n_exclusive=(30, 30),
            density_range=(0.05, 0.2),
            noise=0.02,
            seed=4,
        )
    )
    model = small_crosscoder(d_models=(24, 24), dict_size=128, k=8, n_shared=8)
    cfg = TrainConfig(steps=400, lr=3e-3, warmup_steps=20, dead_tokens=10_000, aux_k=12)
    train(model, source.batches(256, 400, seed=2), cfg)
    held_out = list(source.batches(1000, 10, seed=77))
    ema_l0 = evaluate(model, held_out).l0
    assert abs(ema_l0 / 8 - 1) <= 0.10, ema_l0
    calibrate_threshold_(model, list(source.batches(1000, 10, seed=78)))
    fitted_l0 = evaluate(model, held_out).l0
    assert abs(fitted_l0 / 8 - 1) <= 0.02, fitted_l0


# ----------------------------------------------------------------------------- CE recovered


class TinyLM(nn.Module):
    """Embedding -> MLP (the site) added to the residual -> unembedding."""

    def __init__(self, vocab: int, d: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor, replace: Callable | None = None) -> torch.Tensor:
        h = self.embed(tokens)
        m = self.mlp(h)
        if replace is not None:
            m = replace(m)
        return self.unembed(h + 3 * m)


class TinyAdapter(ModelAdapter):
    """The adapter contract over :class:`TinyLM`."""

    def __init__(self, model: TinyLM) -> None:
        self.model = model

    @property
    def vocab_size(self) -> int:
        return self.model.embed.num_embeddings

    def sites(self) -> list[Site]:
        return [Site("0.mlp_out", "mlp", 0, self.model.embed.embedding_dim)]

    def capture(self, tokens: torch.Tensor, sites: object) -> dict[str, torch.Tensor]:
        return {"0.mlp_out": self.model.mlp(self.model.embed(tokens))}

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def logits_with_replacement(
        self, tokens: torch.Tensor, site: str, replace: Callable
    ) -> torch.Tensor:
        self.site(site)
        return self.model(tokens, replace)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.unembed(hidden)


@pytest.mark.parametrize("p0", [0, 1])
@torch.no_grad()
def test_ce_recovered_matches_float64_recomputation(p0: int) -> None:
    lms = {"A": TinyLM(40, 12, seed=0), "B": TinyLM(40, 20, seed=1)}
    adapters = {n: TinyAdapter(lm) for n, lm in lms.items()}
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(0, 40, (64, 16), generator=g)

    def acts(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: a.capture(tokens, ["0.mlp_out"])["0.mlp_out"].reshape(-1, a.sites()[0].dim)
                for n, a in adapters.items()}  # fmt: skip

    model = small_crosscoder(d_models=(12, 20), n_shared=0, dict_size=64, k=6)
    with torch.enable_grad():
        train(model, [acts(corpus[i : i + 4]) for i in range(0, 64, 4)] * 10,
              TrainConfig(steps=160, lr=3e-3, warmup_steps=10))  # fmt: skip
    tokens = torch.randint(0, 40, (4, 16), generator=g)
    got = ce_recovered(model, adapters, {"A": "0.mlp_out", "B": "mlp"}, tokens, first_position=p0)

    # independent float64 recomputation
    lm64 = {n: TinyLM(40, lm.embed.embedding_dim, 0).double() for n, lm in lms.items()}
    for n in lms:
        lm64[n].load_state_dict({k: v.double() for k, v in lms[n].state_dict().items()})
    sd = {k: v.double() for k, v in model.state_dict().items()}
    s = sd["input_scale_M"]
    x = torch.cat([lm64["A"].mlp(lm64["A"].embed(tokens)).reshape(64, 12) * s[0],
                   lm64["B"].mlp(lm64["B"].embed(tokens)).reshape(64, 20) * s[1]], 1)  # fmt: skip
    W_dec = sd["W_dec_excl_XC"]
    rho = W_dec[:, :12].norm(dim=1) + W_dec[:, 12:].norm(dim=1)
    pre = (x @ sd["W_enc_CL"] + sd["b_enc_L"]).clamp_min(0)
    y = (pre * (pre * rho > sd["threshold"])) @ W_dec + sd["b_dec_C"]
    recon = {"A": y[:, :12] / s[0], "B": y[:, 12:] / s[1]}

    def ce(logits: torch.Tensor) -> float:
        logp = logits[:, :-1].log_softmax(-1)
        return float(-logp.gather(-1, tokens[:, 1:, None]).mean())

    keep = torch.arange(16)[None, :, None] < p0  # positions left as the model made them
    for n, lm in lm64.items():
        clean = ce(lm(tokens))
        zero = ce(lm(tokens, lambda m: torch.where(keep, m, 0.0)))
        spliced = ce(lm(tokens, lambda m, n=n: torch.where(keep, m, recon[n].reshape(m.shape))))
        assert got[n].ce_clean == pytest.approx(clean, abs=1e-5)
        assert got[n].ce_zero == pytest.approx(zero, abs=1e-5)
        assert got[n].ce_spliced == pytest.approx(spliced, abs=1e-4)
        assert got[n].recovered == pytest.approx((zero - spliced) / (zero - clean), abs=1e-3)
        if p0 == 0:  # (with position 0 kept, zeroing this random tiny model barely hurts)
            assert 0.3 < got[n].recovered <= 1.05
