"""The TransformerLens adapter on the in-repo MoE and dense models (``crossdiff.models``)."""

from __future__ import annotations

import pytest
import torch

from crossdiff.adapters import adapt
from crossdiff.plugins import create_plugin_manager

build = pytest.importorskip("crossdiff.models.build")
config_module = pytest.importorskip("crossdiff.models.config")


@pytest.mark.parametrize("arch", ["moe", "dense"])
def test_in_repo_model_through_the_adapter(arch: str) -> None:
    config = config_module.ModelConfig(
        arch=arch, n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=64, n_ctx=16
    )
    model = build.build_model(config).eval()
    adapter = adapt(model, create_plugin_manager())
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    captured = adapter.capture(tokens, ["0.mlp_out", "1.resid_post"])
    assert captured["1.resid_post"].shape == (2, 9, 32)
    torch.testing.assert_close(adapter.unembed(captured["1.resid_post"]), adapter.logits(tokens))
    if arch == "dense":
        assert adapter.moe_layers() == []
        return
    assert adapter.moe_layers() == [0, 1]
    opened = adapter.expert_outputs(tokens, 1)
    torch.testing.assert_close(opened.routing.topk_weights.sum(-1), torch.ones(18))  # renormalised
    torch.testing.assert_close(opened.contribution(), opened.block_output, atol=1e-5, rtol=0)
    top1 = adapter.forward_restricted(tokens, 1, keep_top_n=1).block_outputs[1]
    torch.testing.assert_close(top1, opened.contribution(1), atol=1e-5, rtol=0)


def test_an_in_repo_model_directory_loads_by_path(tmp_path) -> None:
    from crossdiff.adapters import load_adapter
    from crossdiff.models.checkpoint import save_weights
    from tests.adapters.tiny_models import word_tokenizer

    config = config_module.ModelConfig(
        arch="moe", n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=64, n_ctx=16
    )
    model = build.build_model(config).eval()
    save_weights(tmp_path, model, config)
    words = ["<unk>", "<eos>", *(f"w{i}" for i in range(62))]
    word_tokenizer(words).save_pretrained(tmp_path / "tokenizer")
    loaded = load_adapter(str(tmp_path), create_plugin_manager())
    assert type(loaded).__name__ == "TransformerLensAdapter"
    assert loaded.tokenizer.get_vocab() == {w: i for i, w in enumerate(words)}
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loaded.logits(tokens), adapt(model, create_plugin_manager()).logits(tokens)
    )
