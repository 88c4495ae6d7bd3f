"""Interventions on latents, against answers known by construction.

Two tiny random models, one through each adapter: a TransformerLens dense model (``a``) and a
Hugging Face Qwen2-MoE (``b``), read at ``1.mlp_out``. The crosscoder is constructed: latent 0
decodes only into ``a`` and reads ``a``'s activation (so its activation varies by token),
latent 1 decodes only into ``b`` and is active on every token, the rest never fire.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.errors import ConfigError
from crossdiff.interventions import (
    ALL,
    Intervention,
    ablate,
    count_firings,
    edited_logits,
    heldout_batches,
    intervened_logits,
    measure_interventions,
    raw_decoder_rows,
    site_edits,
    steer,
)
from crossdiff.report.explorer import logit_effects, top_logits
from tests.adapters.tiny_models import D_MODEL, VOCAB, hf_model, tl_model

SITE = "1.mlp_out"
SCALES = (2.0, 0.5)
"""Input scales s_a, s_b: not 1, so an edit that forgot to divide by s_m would be off."""


@pytest.fixture(scope="module")
def adapters():
    from crossdiff_hf.adapter import HuggingFaceAdapter
    from crossdiff_tl.adapter import TransformerLensAdapter

    return {
        "a": TransformerLensAdapter(tl_model(False)),
        "b": HuggingFaceAdapter(hf_model("qwen2_moe")),
    }


def tokens_of(seed: int, batch: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def constructed(seed: int = 0, code: float = 4.0) -> tuple[Crosscoder, dict[str, torch.Tensor]]:
    """The crosscoder of the module docstring and its parts (unit directions, encoder vector)."""
    generator = torch.Generator().manual_seed(seed)
    unit = lambda v: v / v.norm()  # noqa: E731
    parts = {
        "d_a": unit(torch.randn(D_MODEL, generator=generator)),
        "d_b": unit(torch.randn(D_MODEL, generator=generator)),
        "w": torch.randn(D_MODEL, generator=generator),
        "code": torch.tensor(code),
    }
    cfg = CrosscoderConfig(models=("a", "b"), d_models=(D_MODEL, D_MODEL), dict_size=8, k=2)
    crosscoder = Crosscoder(cfg)
    with torch.no_grad():
        crosscoder.W_enc_CL.zero_()
        crosscoder.W_enc_CL[:D_MODEL, 0] = parts["w"]  # latent 0 reads model a
        crosscoder.b_enc_L.fill_(-1.0)  # latents 2.. never fire
        crosscoder.b_enc_L[0] = 0.0
        crosscoder.b_enc_L[1] = code  # latent 1: active everywhere, activation = code
        W_dec = crosscoder.W_dec_excl_XC
        W_dec[0, :D_MODEL], W_dec[0, D_MODEL:] = parts["d_a"], 0.0
        W_dec[1, :D_MODEL], W_dec[1, D_MODEL:] = 0.0, parts["d_b"]
        crosscoder.input_scale_M.copy_(torch.tensor(SCALES))
        crosscoder.threshold.fill_(0.0)
    return crosscoder, parts


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, p0: int = 1) -> float:
    """Mean CE of the predictions at positions p0 … P−2 (float64)."""
    flat = logits[:, p0:-1].double().reshape(-1, logits.shape[-1])
    return float(F.cross_entropy(flat, tokens[:, p0 + 1 :].reshape(-1)))


def test_ablating_a_latent_changes_only_the_model_it_decodes_into(adapters) -> None:
    """Latent 0 decodes only into a: ablating it moves a's loss by exactly what removing
    f_t·d_a/s_a at each token by hand does (f_t from a's activation, computed here), and leaves
    b's loss and next-token distribution exactly unchanged; latent 1, the other way round."""
    crosscoder, parts = constructed()
    batches = {"x": [tokens_of(1)], "y": [tokens_of(2, batch=2)]}
    s_a = SCALES[0]
    with torch.no_grad():  # latent 0's bias: it fires on about half of the tokens
        _, cache = adapters["a"].model.run_with_cache(torch.cat([batches["x"][0], batches["y"][0]]))
        projection = s_a * cache["blocks.1.hook_mlp_out"][:, 1:] @ parts["w"]
        crosscoder.b_enc_L[0] = -float(projection.median())
    effects = measure_interventions(
        crosscoder, adapters, {"a": SITE, "b": SITE}, batches,
        {"zero": ablate(0), "one": ablate([1])},
    )  # fmt: skip
    # an independent reference for model a, through TransformerLens's own hook
    model_a = adapters["a"].model
    expected, tokens_total = 0.0, 0
    for domain, (tokens,) in batches.items():
        with torch.no_grad():
            clean = model_a(tokens)
            _, cache = model_a.run_with_cache(tokens)
            act = cache["blocks.1.hook_mlp_out"][:, 1:]  # [B, P-1, D]
            f = torch.relu(s_a * act @ parts["w"] + crosscoder.b_enc_L[0])  # latent 0, per token
            assert 0 < int((f > 0).sum()) < f.numel()  # it fires on some tokens, not all
            removed = f[..., None] * parts["d_a"] / s_a

            def hook(a, hook, removed=removed):
                return torch.cat([a[:, :1], a[:, 1:] - removed], dim=1)

            edited = model_a.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", hook)])
        delta = next_token_loss(edited, tokens) - next_token_loss(clean, tokens)
        assert effects["zero"]["a"].delta_loss[domain] == pytest.approx(delta, abs=2e-6)
        log_p = clean[:, 1:-1].double().log_softmax(-1)
        log_q = edited[:, 1:-1].double().log_softmax(-1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        assert effects["zero"]["a"].kl[domain] == pytest.approx(kl, rel=1e-4, abs=1e-9)
        n = tokens.shape[0] * (tokens.shape[1] - 2)
        assert effects["zero"]["a"].tokens[domain] == n
        expected, tokens_total = expected + delta * n, tokens_total + n
    assert effects["zero"]["a"].delta_loss[ALL] == pytest.approx(expected / tokens_total, abs=2e-6)
    assert effects["zero"]["a"].kl[ALL] > 1e-4  # the edit matters to a ...
    assert abs(effects["zero"]["a"].delta_loss[ALL]) > 1e-4
    assert effects["zero"]["b"].delta_loss[ALL] == 0.0  # ... and not at all to b
    assert effects["zero"]["b"].kl[ALL] < 1e-12  # rounding of equal distributions
    # latent 1 decodes only into b
    assert effects["one"]["b"].kl[ALL] > 1e-4
    assert effects["one"]["a"].delta_loss[ALL] == 0.0
    assert effects["one"]["a"].kl[ALL] < 1e-12
    # latent 1 is active on every token: the KL where it is active is the KL everywhere
    assert effects["one"]["b"].kl_active == pytest.approx(effects["one"]["b"].kl[ALL])
    assert effects["one"]["b"].active_tokens == tokens_total
    assert 0 < effects["zero"]["a"].active_tokens < tokens_total


def test_the_edit_is_the_latents_own_contribution_to_the_reconstruction(adapters) -> None:
    """Ablating a set removes exactly the latents' share of the crosscoder's decode (in each
    model's own units); steering adds alpha times the decoder rows."""
    crosscoder, _ = constructed()
    codes = torch.zeros(5, 8)
    codes[:, 0], codes[:, 1] = torch.arange(5.0), 2.0
    edits = site_edits(crosscoder, ablate([0, 1]), codes)
    kept = codes.clone()
    kept[:, [0, 1]] = 0
    full, without = crosscoder.decode(codes), crosscoder.decode(kept)
    for m in ("a", "b"):
        torch.testing.assert_close(edits[m].float(), without[m] - full[m], atol=1e-6, rtol=0)
    rows = raw_decoder_rows(crosscoder, [1])
    steered = site_edits(crosscoder, steer(1, -3.0), codes)
    torch.testing.assert_close(steered["b"], (-3.0 * rows["b"]).expand(5, -1))
    assert float(steered["a"].abs().max()) == 0.0


@pytest.mark.parametrize("model", ["a", "b"])
def test_steering_moves_the_promoted_tokens_logits_with_the_sign_of_alpha(adapters, model) -> None:
    """Steer a latent decoding along a random direction into the LAST block's output: the tokens
    its logit effects promote (the explorer's function) gain logit against the average token
    for alpha > 0, lose for alpha < 0, and more for a larger alpha."""
    site = {"a": "1.resid_post", "b": "2.resid_post"}[model]
    generator = torch.Generator().manual_seed(3)
    direction = torch.randn(D_MODEL, generator=generator)
    cfg = CrosscoderConfig(models=("a", "b"), d_models=(D_MODEL, D_MODEL), dict_size=4, k=1)
    crosscoder = Crosscoder(cfg)
    with torch.no_grad():
        crosscoder.W_dec_excl_XC.zero_()
        column = 0 if model == "a" else D_MODEL
        crosscoder.W_dec_excl_XC[2, column : column + D_MODEL] = direction
    adapter = adapters[model]
    promoted, _ = top_logits(logit_effects(adapter.unembed, direction[None]), 10)
    tokens = tokens_of(4)
    sites = {"a": "1.resid_post", "b": "2.resid_post"}
    clean = adapter.logits(tokens)
    shifts = {}
    for alpha in (-4.0, -1.0, 1.0, 4.0):
        logits = intervened_logits(
            crosscoder, adapters, sites, {"a": tokens, "b": tokens}, model, steer(2, alpha)
        )
        change = (logits - clean)[:, 1:]  # [B, P-1, V]
        shifts[alpha] = float((change[..., promoted[0]].mean(-1) - change.mean(-1)).mean())
        other = "b" if model == "a" else "a"
        unchanged = intervened_logits(
            crosscoder, adapters, sites, {"a": tokens, "b": tokens}, other, steer(2, alpha)
        )
        torch.testing.assert_close(unchanged, adapters[other].logits(tokens), atol=0, rtol=0)
    assert shifts[1.0] > 0 > shifts[-1.0]
    assert shifts[4.0] > shifts[1.0] and shifts[-4.0] < shifts[-1.0]
    assert site == sites[model]


def test_edited_logits_leave_positions_before_the_first_alone(adapters) -> None:
    tokens = tokens_of(5, batch=2, length=8)
    edit = torch.full((2 * 7, D_MODEL), 5.0, dtype=torch.float64)
    logits = edited_logits(adapters["a"], tokens, SITE, edit, first_position=1)
    clean = adapters["a"].logits(tokens)
    torch.testing.assert_close(logits[:, 0], clean[:, 0])
    assert float((logits[:, 1:] - clean[:, 1:]).abs().max()) > 1e-3


def test_firing_counts_and_held_out_batches() -> None:
    import numpy as np

    ids = np.arange(5 * 4).reshape(5, 4)
    domains = np.array(["s", "c", "s", "c", "s"])
    batches = heldout_batches(ids, domains, max_sequences=2, batch_tokens=4)
    assert list(batches) == ["c", "s"]
    assert [b.tolist() for b in batches["s"]] == [[ids[0].tolist()], [ids[2].tolist()]]
    with pytest.raises(ConfigError, match="max_sequences"):
        heldout_batches(ids, domains, max_sequences=0)


def test_count_firings_counts_tokens_where_a_latent_is_active(adapters) -> None:
    crosscoder, _ = constructed()
    batch = tokens_of(6, batch=2, length=10)
    counts = count_firings(crosscoder, adapters, {"a": SITE, "b": SITE}, {"x": [batch]})
    assert int(counts[1]) == 2 * 9  # active everywhere from position 1 on
    assert 0 < int(counts[0]) < 2 * 9
    assert int(counts[2:].sum()) == 0


def test_bad_interventions_are_named() -> None:
    crosscoder, _ = constructed()
    with pytest.raises(ConfigError, match="at least one latent"):
        ablate([])
    with pytest.raises(ConfigError, match="kind"):
        Intervention((1,), "zero")
    with pytest.raises(ConfigError, match=r"latent\(s\) \[8\] out of range"):
        site_edits(crosscoder, ablate(8), torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="finite"):
        steer(1, float("nan"))
