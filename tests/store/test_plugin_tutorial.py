"""The adapter tutorial in docs/plugins.md runs as written: its code is read from the page."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from crossdiff.store import load_shard

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def tutorial_block(tag: str) -> str:
    """The python block right after ``<!-- example: TAG -->`` in docs/plugins.md."""
    match = re.search(rf"<!-- example: {tag} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no example tagged {tag!r} in docs/plugins.md"
    return match.group(1)


@pytest.fixture
def tinymoe(monkeypatch) -> types.ModuleType:
    """The tutorial's plugin module, importable as ``crossdiff_tinymoe``."""
    module = types.ModuleType("crossdiff_tinymoe")
    code = compile(tutorial_block("tinymoe-adapter"), "docs/plugins.md", "exec")
    monkeypatch.setitem(sys.modules, "crossdiff_tinymoe", module)
    exec(code, module.__dict__)
    return module


def test_the_tutorial_harvests_through_its_adapter(tinymoe, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(tutorial_block("tinymoe-harvest"), "docs/plugins.md", "exec"), namespace)
    store, models, batch = namespace["store"], namespace["models"], namespace["batch"]
    assert all(type(a).__name__ == "TinyMoEAdapter" for a in models.values())
    assert store.complete and store.tokens == 64 * 31
    assert store.dims == {"small": {"1.mlp_out": 32}, "wide": {"1.mlp_out": 64}}
    assert {k: tuple(v.shape) for k, v in batch.items()} == {"small": (256, 32), "wide": (256, 64)}
    # the stored rows are the MoE layer's output, recomputed here by hand for one sequence
    shard = load_shard(store.shard_paths()[0])
    sequence = int(shard["sequences"][0])
    tokens = torch.from_numpy(namespace["ids"][[sequence]]).long()
    model = models["wide"].model
    with torch.no_grad():
        x = model.layers[0](model.embed(tokens))
        block = model.layers[1]
        steps = torch.arange(1, 33)[None, :, None]
        x = x + block.mix(block.norm(x).cumsum(1) / steps)
        expected = block.moe(block.moe_norm(x))[0, 1:]  # [31, 64]
    torch.testing.assert_close(shard["act/wide/1.mlp_out"][:31], expected)


def test_the_tutorial_adapter_keeps_the_contract(tinymoe) -> None:
    from crossdiff.errors import ConfigError

    torch.manual_seed(0)
    model = tinymoe.TinyMoE(d_model=16).eval()
    adapter = tinymoe.TinyMoEFactory()(model)
    tokens = torch.randint(0, 512, (2, 8))
    ran: list[int] = []
    for index, block in enumerate(model.layers):
        block.register_forward_hook(lambda *args, index=index: ran.append(index))
    captured = adapter.capture(tokens, ["layers.0.moe", "0.resid_post"])
    assert ran == [0]  # stopped after the last block needed
    assert {k: tuple(v.shape) for k, v in captured.items()} == {
        "0.mlp_out": (2, 8, 16),
        "0.resid_post": (2, 8, 16),
    }
    with pytest.raises(ConfigError, match=r"unknown site '2\.mlp_out'.*1\.resid_post"):
        adapter.site("2.mlp_out")
    routing = adapter.routing(tokens)[1]
    assert routing.topk_indices.shape == routing.topk_weights.shape == (16, 2)
    torch.testing.assert_close(routing.topk_weights.sum(-1), torch.ones(16))
    assert bool((routing.topk_weights[:, 0] >= routing.topk_weights[:, 1]).all())
    zeroed = adapter.logits_with_replacement(tokens, "1.mlp_out", torch.zeros_like)
    assert not torch.allclose(zeroed, adapter.logits(tokens))
