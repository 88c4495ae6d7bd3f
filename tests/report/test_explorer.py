"""The explorer's data: logit effects against the model itself, tallies against the existing
scans, context values against a direct encoding, and the files a browser loads."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.report.explorer import (
    HIST_EDGES,
    ExplorerInputs,
    ExplorerSettings,
    _logit_lists,
    logit_effects,
    tally_latents,
    top_logits,
    window_values,
    write_explorer,
)

D_MODEL, VOCAB = 16, 40


def one_block_model(seed: int = 0):
    """A one-block LayerNorm HookedTransformer; its final norm has a non-trivial weight and bias."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(
        n_layers=1, d_model=D_MODEL, n_ctx=8, d_head=4, n_heads=4, d_mlp=32, d_vocab=VOCAB,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.ln_final.w.copy_(0.5 + torch.rand(D_MODEL, generator=generator))
        model.ln_final.b.copy_(0.3 * torch.randn(D_MODEL, generator=generator))
    return model


def effective_unembedding(model) -> torch.Tensor:
    """``[V, D]`` v_j = P(w ⊙ W_U[:, j]) (P removes the mean, as the LayerNorm does), float64."""
    columns = (model.ln_final.w.double()[:, None] * model.W_U.double()).T  # [V, D]
    return columns - columns.mean(dim=1, keepdim=True)


def test_a_token_unembedding_direction_promotes_that_token_first() -> None:
    """d = v_t for the token t with the longest v_t: by Cauchy–Schwarz v_t·v_j < v_t·v_t for
    every other j, so t must be promoted first — by the explorer and by the model itself."""
    from crossdiff_tl.adapter import TransformerLensAdapter

    model = one_block_model()
    adapter = TransformerLensAdapter(model)
    v_VD = effective_unembedding(model)
    token = int(v_VD.norm(dim=1).argmax())
    direction = v_VD[token].float()
    effects = logit_effects(adapter.unembed, direction[None])[0]
    promoted, suppressed = top_logits(effects[None], 5)
    assert int(promoted[0, 0]) == token
    # independent float64 computation: effect_j = v_j · (P d) / σ(P d), σ LayerNorm's scale
    centred = direction.double() - direction.double().mean()
    sigma = (centred.pow(2).mean() + model.cfg.eps).sqrt()
    expected = (v_VD @ centred) / sigma
    torch.testing.assert_close(effects.double(), expected, rtol=1e-4, atol=1e-4)
    assert int(suppressed[0, 0]) == int(expected.argmin())
    # through the model: add a large multiple of d to the last residual stream (the site's
    # direct path); the LayerNorm's scale invariance makes the logits tend to unembed(d)
    tokens = torch.tensor([[1, 2, 3, 4]])
    hook = (
        "blocks.0.hook_resid_post",
        lambda resid, hook: resid + 1e4 * direction.to(resid.dtype),
    )
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[hook])[0, -1]
    zero = adapter.unembed(torch.zeros(1, D_MODEL))[0]
    torch.testing.assert_close(logits - zero, effects, rtol=1e-3, atol=1e-3)
    assert int(logits.argmax()) == token


def test_the_explorer_lists_the_planted_token_for_the_latent_and_model() -> None:
    """A crosscoder latent whose decoder row for model ``b`` is v_t promotes t in ``b``."""
    from crossdiff_tl.adapter import TransformerLensAdapter

    model = one_block_model(seed=1)
    adapter = TransformerLensAdapter(model)
    v_VD = effective_unembedding(model)
    token = int(v_VD.norm(dim=1).argmax())
    crosscoder = Crosscoder(
        CrosscoderConfig(models=("a", "b"), d_models=(D_MODEL, D_MODEL), dict_size=8, k=2)
    )
    with torch.no_grad():
        crosscoder.W_dec_excl_XC[5, D_MODEL:] = v_VD[token].float()
    names = {i: f"tok{i}" for i in range(VOCAB)}
    inputs = ExplorerInputs(names.__getitem__, torch.zeros(1, 4), {"b": adapter.unembed})
    lists = _logit_lists(crosscoder, [2, 5], inputs, ExplorerSettings(logit_tokens=3))
    assert set(lists) == {"b"}  # no unembedding given for model a: no logit effects
    assert lists["b"][1]["promoted"][0][0] == f"tok{token}"
    assert len(lists["b"][1]["promoted"]) == 3 == len(lists["b"][0]["suppressed"])


def test_write_explorer_makes_scripts_that_assign_globals(tmp_path: Path) -> None:
    index = {"columns": ["latent"], "rows": [[3], [130]], "chunk": 128}
    cards = {3: {"latent": 3, "contexts": []}, 130: {"latent": 130, "contexts": ["</script>"]}}
    paths = write_explorer(tmp_path, index, cards)
    assert [p.name for p in paths] == ["index.js", "cards-0.js", "cards-1.js"]
    text = paths[0].read_text()
    assert text.startswith("window.crossdiffLatents = ") and text.endswith(";\n")
    assert json.loads(text[len("window.crossdiffLatents = ") : -2]) == index
    chunk = paths[2].read_text()
    prefix = "(window.crossdiffCards = window.crossdiffCards || {})[1] = "
    assert chunk.startswith(prefix)
    assert json.loads(chunk[len(prefix) : -2]) == {"130": cards[130]}


def test_settings_are_checked() -> None:
    from crossdiff.errors import ConfigError

    with pytest.raises(ConfigError, match="contexts must be >= 1"):
        ExplorerSettings(contexts=0)


# ---------------------------------------------------------------- on the pipeline's run


def _run_parts(run: Path):
    from crossdiff.crosscoder.stage import WEIGHTS_DIR
    from crossdiff.store import open_store

    crosscoder = Crosscoder.from_pretrained(run / "crosscoder" / WEIGHTS_DIR)
    return crosscoder, open_store(run / "activations" / "validation")


@pytest.mark.slow
def test_tallies_agree_with_the_scans_of_the_analyses(report_run: Path) -> None:
    """Firing counts, top activations and the latent-scaling β match the implementations the
    analyses use; the histogram holds every firing, in the bin of its value."""
    from crossdiff.latents import iter_store_batches, scan_latents
    from crossdiff_analyses.feature_classes import latent_scaling

    crosscoder, store = _run_parts(report_run)
    tallies = tally_latents(crosscoder, store, top_n=4, batch_size=300)
    scan = scan_latents(crosscoder, store, top_n=4)
    assert torch.equal(tallies.fires_L, scan.fires_L)
    for domain in store.domains:
        assert torch.equal(tallies.domain_fires[domain], scan.domain_fires[domain])
    torch.testing.assert_close(tallies.top_values_NL, scan.top_values_NL)
    assert torch.equal(tallies.hist_LH.sum(1), tallies.fires_L)
    beta_LM = latent_scaling(crosscoder, iter_store_batches(crosscoder, store))
    fired = tallies.fires_L > 0
    ours = tallies.scaling.beta()  # batches of 300 tokens against the analysis' own batching
    torch.testing.assert_close(ours[fired], beta_LM[fired], rtol=1e-6, atol=1e-9)
    # one latent's histogram by hand, from its activations over the whole store
    latent = int(tallies.fires_L.argmax())
    values = torch.cat(
        [crosscoder.encode(a)[:, latent] for a, _ in iter_store_batches(crosscoder, store)]
    )
    values = values[values > 0]
    bins = torch.bucketize(values, torch.tensor(HIST_EDGES[1:-1]))
    assert torch.equal(torch.bincount(bins, minlength=len(HIST_EDGES) - 1), tallies.hist_LH[latent])


@pytest.mark.slow
def test_window_values_are_the_encoders_activations(report_run: Path) -> None:
    from crossdiff.latents import iter_store_batches

    crosscoder, store = _run_parts(report_run)
    everything = torch.cat([crosscoder.encode(a) for a, _ in iter_store_batches(crosscoder, store)])
    latents = [int(i) for i in everything.count_nonzero(0).argsort(descending=True)[:2]]
    fired = [everything[:, latent].nonzero().flatten().tolist() for latent in latents]
    rows = torch.tensor([[[fired[0][0], fired[0][-1], -1]], [[fired[1][1], 3, fired[1][-1]]]])
    values = window_values(crosscoder, store, rows, latents, batch_size=256)
    expected = torch.zeros(rows.shape)
    for i, latent in enumerate(latents):
        for w, row in enumerate(rows[i, 0].tolist()):
            if row >= 0:
                expected[i, 0, w] = everything[row, latent]
    assert expected.count_nonzero() >= 4
    torch.testing.assert_close(values, expected)
