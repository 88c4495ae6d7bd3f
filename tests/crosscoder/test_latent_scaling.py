"""Latent scaling's one accumulator against a float64 loop, one and several sites per model;
the explorer's logit directions read each model's deepest site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.crosscoder.classes import LatentScalingSums
from crossdiff.report.explorer import logit_directions


def _model_and_batch(sites: tuple[str, ...]) -> tuple[Crosscoder, dict[str, torch.Tensor]]:
    cfg = CrosscoderConfig(models=("A", "B"), d_models=(5, 5), dict_size=12, k=4, n_shared=2,
                           sites=sites, seed=3)  # fmt: skip
    model = Crosscoder(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = {
        key: torch.randn(40, 5, generator=gen) * (i + 1) for i, key in enumerate(cfg.input_keys)
    }
    model.fit_input_scales_(batch)
    model.threshold.fill_(0.05)
    return model, batch


@pytest.mark.parametrize("sites", [(), ("x", "y", "z")])
def test_latent_scaling_equals_a_float64_loop(sites: tuple[str, ...]) -> None:
    model, batch = _model_and_batch(sites)
    f_BL = model.encode(batch)
    assert int((f_BL > 0).sum()) > 20  # enough firings to test something
    sums = LatentScalingSums(model)
    sums.add(batch, model.decode(f_BL), f_BL)
    # reference: the normalised inputs and reconstruction, each model's columns (all its sites)
    x = model.concat_inputs({k: v.double() for k, v in batch.items()}).double().numpy()
    W = model.decoder_weights().detach().double().numpy()
    x_hat = f_BL.double().numpy() @ W + model.b_dec_C.detach().double().numpy()
    f = f_BL.double().numpy()
    edges = np.cumsum([0, *model.cfg.widths])
    expected = np.zeros((12, 2))
    for m in range(2):
        cols = slice(edges[m], edges[m + 1])
        for i in range(12):
            d = W[i, cols]
            u = d / max(np.linalg.norm(d), 1e-30)
            num = sum(
                f[t, i] * ((x[t, cols] - x_hat[t, cols] + f[t, i] * d) @ u) for t in range(40)
            )
            expected[i, m] = num / max((f[:, i] ** 2).sum(), 1e-30)
    np.testing.assert_allclose(sums.beta().numpy(), expected, rtol=1e-6, atol=1e-9)


def test_logit_directions_are_each_models_deepest_site() -> None:
    model, _ = _model_and_batch(("x", "y", "z"))
    W = model.decoder_weights().detach().double()
    a, b = logit_directions(model)
    assert torch.equal(a, W[:, 10:15]) and torch.equal(b, W[:, 25:30])  # A/z and B/z
    single, _ = _model_and_batch(())
    a, b = logit_directions(single)
    W = single.decoder_weights().detach().double()
    assert torch.equal(a, W[:, :5]) and torch.equal(b, W[:, 5:])
