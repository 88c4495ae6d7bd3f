"""Sites, capture, logits, replacement and unembedding, dense and MoE, against plain forwards."""

from __future__ import annotations

import pytest
import torch

from crossdiff.errors import ConfigError
from tests.adapters.conftest import Case, get_case

KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")


def reference_sites(case: Case, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every common site of every layer from one plain forward (TL cache / torch hooks)."""
    model = case.model
    with torch.no_grad():
        if case.name.startswith("tl_"):
            _, cache = model.run_with_cache(tokens)
            return {
                f"{layer}.{kind}": cache[f"blocks.{layer}.hook_{kind}"]
                for layer in range(model.cfg.n_layers)
                for kind in (*KINDS, "resid_mid")
            }
        layers = model.transformer.h if case.name == "gpt2" else model.model.layers
        attn = "attn" if case.name == "gpt2" else "self_attn"
        found: dict[str, torch.Tensor] = {}
        handles = []
        for index, layer in enumerate(layers):

            def first(value):
                return value[0] if isinstance(value, tuple) else value

            def keep(name):
                return lambda module, args, output: found.__setitem__(name, first(output))

            handles += [
                layer.register_forward_pre_hook(
                    lambda module, args, i=index: found.__setitem__(f"{i}.resid_pre", args[0])
                ),
                getattr(layer, attn).register_forward_hook(keep(f"{index}.attn_out")),
                layer.mlp.register_forward_hook(keep(f"{index}.mlp_out")),
                layer.register_forward_hook(keep(f"{index}.resid_post")),
            ]
        try:
            model(tokens)
        finally:
            for handle in handles:
                handle.remove()
        return found


@pytest.mark.parametrize("name", ["llama", "gpt2", "tl_dense", "mixtral", "deepseek_moe", "tl_moe"])
def test_capture_equals_plain_forward(name: str, tokens: torch.Tensor) -> None:
    case = get_case(name)
    reference = reference_sites(case, tokens)
    names = [site.name for site in case.adapter.sites()]
    assert set(names) == set(reference)
    captured = case.adapter.capture(tokens, names)
    assert set(captured) == set(names)
    for site in case.adapter.sites():
        assert captured[site.name].shape == (*tokens.shape, site.dim)
        torch.testing.assert_close(captured[site.name], reference[site.name], atol=0, rtol=0)
    # native names are accepted and give the same tensors under the common name
    native = case.adapter.capture(tokens, [case.adapter.sites()[2].native])
    torch.testing.assert_close(native[names[2]], reference[names[2]], atol=0, rtol=0)


def test_capture_stops_after_the_last_needed_layer(dense_case: Case, tokens: torch.Tensor) -> None:
    calls: list[int] = []
    later = dense_case.mlp(1)  # layer 1's MLP; the first capture only needs layer 0
    handle = later.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        dense_case.adapter.capture(tokens, ["0.resid_post", "0.attn_out"])
        assert calls == []
        dense_case.adapter.capture(tokens, ["1.mlp_out"])
        assert calls == [1]
    finally:
        handle.remove()


def test_residual_stream_is_consistent(dense_case: Case, tokens: torch.Tensor) -> None:
    adapter = dense_case.adapter
    got = adapter.capture(tokens, ["0.resid_post", "1.resid_pre"])
    torch.testing.assert_close(got["0.resid_post"], got["1.resid_pre"], atol=0, rtol=0)


def test_unembed_of_the_last_residual_gives_the_logits(dense_case: Case, tokens) -> None:
    adapter = dense_case.adapter
    last = [s.name for s in adapter.sites() if s.name.endswith("resid_post")][-1]
    hidden = adapter.capture(tokens, [last])[last]  # [B, P, D]
    logits = adapter.logits(tokens)
    assert logits.shape == (*tokens.shape, adapter.vocab_size)
    torch.testing.assert_close(adapter.unembed(hidden), logits, atol=1e-5, rtol=0)
    flat = adapter.unembed(hidden[0, 3])  # a single [D] vector
    torch.testing.assert_close(flat, logits[0, 3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_replacement(dense_case: Case, tokens: torch.Tensor, kind: str) -> None:
    adapter = dense_case.adapter
    site = f"0.{kind}"
    plain = adapter.logits(tokens)
    same = adapter.logits_with_replacement(tokens, site, lambda x: x)
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=0)
    seen: list[torch.Tensor] = []

    def scale(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return 3 * x

    changed = adapter.logits_with_replacement(tokens, site, scale)
    assert seen[0].shape == (*tokens.shape, adapter.site(site).dim)
    assert (changed - plain).abs().max() > 1e-3
    # ``replace`` received the activation the site holds in a plain forward
    torch.testing.assert_close(seen[0], adapter.capture(tokens, [site])[site], atol=0, rtol=0)


def test_unknown_site_lists_the_valid_ones(dense_case: Case, tokens: torch.Tensor) -> None:
    with pytest.raises(ConfigError) as error:
        dense_case.adapter.capture(tokens, ["0.mlp_outt"])
    message = str(error.value)
    assert "unknown site '0.mlp_outt'" in message
    assert "did you mean '0.mlp_out'" in message
    for site in dense_case.adapter.sites():
        assert site.name in message
    with pytest.raises(ConfigError, match="unknown site"):
        dense_case.adapter.logits_with_replacement(tokens, "9.resid_post", lambda x: x)


def test_dense_models_have_no_moe_view(dense_case: Case, tokens: torch.Tensor) -> None:
    assert dense_case.adapter.moe_layers() == []
    with pytest.raises(ConfigError, match="not an MoE layer"):
        dense_case.adapter.expert_outputs(tokens, 0)
    with pytest.raises(ConfigError, match="not an MoE layer"):
        dense_case.adapter.forward_restricted(tokens, 0, keep_top_n=1)


def test_bad_tokens_and_empty_site_lists_are_refused(
    dense_case: Case, tokens: torch.Tensor
) -> None:
    adapter = dense_case.adapter
    with pytest.raises(ConfigError, match=r"integer \[batch, pos\] tensor, got a 1-d"):
        adapter.capture(tokens[0], ["0.mlp_out"])
    with pytest.raises(ConfigError, match="integer"):
        adapter.logits(tokens.float())
    with pytest.raises(ConfigError, match=rf"token ids must lie in 0\.\.{adapter.vocab_size - 1}"):
        adapter.capture(tokens + adapter.vocab_size, ["0.mlp_out"])
    with pytest.raises(ConfigError, match=r"no sites requested; valid sites: 0\.resid_pre"):
        adapter.capture(tokens, [])
