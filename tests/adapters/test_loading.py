"""Choosing an adapter, loading by path (``save_pretrained`` directories), lazy plugin imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossdiff.adapters import adapt, load_adapter
from crossdiff.errors import ConfigError
from crossdiff.plugins import collect, create_plugin_manager
from tests.adapters.conftest import get_case
from tests.adapters.tiny_models import VOCAB, word_tokenizer


@pytest.fixture(scope="module")
def manager():
    """A plugin manager with the installed plugins."""
    return create_plugin_manager()


def test_the_right_adapter_is_chosen(manager) -> None:
    assert type(get_case("mixtral").adapter).__name__ == "HuggingFaceAdapter"
    assert type(get_case("tl_moe").adapter).__name__ == "TransformerLensAdapter"
    with pytest.raises(ConfigError, match=r"no adapter handles a Linear; adapters tried: .*hugg"):
        adapt(torch.nn.Linear(2, 2), manager)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "deepseek_v3", "deepseek_moe", "llama"])
def test_load_a_saved_directory(name: str, tmp_path: Path, manager) -> None:
    case = get_case(name)
    case.model.save_pretrained(tmp_path)
    words = ["<unk>", *(f"w{i}" for i in range(VOCAB - 1))]
    if name == "llama":
        word_tokenizer(words).save_pretrained(tmp_path)
    loaded = load_adapter(str(tmp_path), manager)
    assert type(loaded).__name__ == "HuggingFaceAdapter"
    assert loaded.model is not case.model
    assert loaded.moe_layers() == case.adapter.moe_layers()
    assert (loaded.tokenizer is not None) == (name == "llama")
    if loaded.tokenizer is not None:
        assert loaded.tokenizer.get_vocab() == {w: i for i, w in enumerate(words)}
    original = case.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, original[key]), key
    tokens = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    # loaded MoEs run transformers' default experts kernel, not eager: same maths, other order
    torch.testing.assert_close(
        loaded.logits(tokens), case.adapter.logits(tokens), atol=1e-5, rtol=0
    )


def test_loaders_recognise_their_directories(tmp_path: Path, manager) -> None:
    loaders = {loader.name: loader for loader in collect(manager.hook.crossdiff_model_loaders())}
    hf, in_repo = loaders["huggingface"], loaders["crossdiff_models"]
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "cfg.json").write_text(json.dumps({"model": {"n_layers": 2}}))
    assert hf.can_load(str(tmp_path / "hf")) and not in_repo.can_load(str(tmp_path / "hf"))
    assert in_repo.can_load(str(tmp_path / "ours")) and not hf.can_load(str(tmp_path / "ours"))
    assert hf.can_load("some-org/some-model")  # a hub name
    assert not hf.can_load(str(tmp_path / "missing" / "deeper" / "x"))
    with pytest.raises(ConfigError, match="no model loader recognises"):
        load_adapter(str(tmp_path), manager)


def test_a_hub_name_offline_fails_clearly(manager, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load a causal LM from 'crossdiff-test/nothing'"):
        load_adapter("crossdiff-test/nothing", manager)


def test_adapter_plugins_import_no_heavy_library() -> None:
    code = (
        "import sys, crossdiff_hf, crossdiff_tl\n"
        "for plugin in (crossdiff_hf, crossdiff_tl):\n"
        "    for provider in (*plugin.crossdiff_model_adapters(),\n"
        "                     *plugin.crossdiff_model_loaders()):\n"
        "        assert provider.name and provider.description\n"
        "        assert not provider.can_load('/nonexistent/a/b') if hasattr(provider, 'can_load')"
        " else not provider.can_adapt(object())\n"
        "heavy = {'torch', 'nnsight', 'transformers', 'transformer_lens'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
