"""``crossdiff train-model`` end to end on a tiny corpus, and loading the result back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossdiff.cli import main
from crossdiff.corpus import load_sequences
from crossdiff.models import load_model
from crossdiff.models.data import validation_sets
from crossdiff.models.evaluate import evaluate

CONFIG = """
[model]
n_layers = 2
d_model = 32
n_heads = 2
d_mlp = 64
num_experts = 4
experts_per_token = 2

[train]
tokens = 4096          # 32 steps of 8 x 16 tokens
batch_size = 8
lr = 1e-2
warmup_steps = 4
eval_every = 16
checkpoint_every = 16
log_every = 8
final_eval_sequences_per_domain = 8
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["moe", "dense"])
def test_train_model_end_to_end(
    arch: str, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = tmp_path / "tiny.toml", tmp_path / arch
    config.write_text(CONFIG)
    argv = [
        "train-model",
        "--arch",
        arch,
        "--corpus",
        str(tiny_corpus),
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "unigram H" in printed and "active params" in printed

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["stage"] == "models"
    assert manifest["tokens_seen"] == 4096 and manifest["steps"] == 32
    assert (
        set(manifest["val_loss"])
        == set(manifest["unigram_entropy"])
        == {"code", "science", "stories"}
    )
    partner = manifest["partner_params"]
    assert abs(manifest["active_params"] / partner["active"] - 1) < 0.01
    if arch == "moe":
        assert manifest["total_params"] > manifest["active_params"]
        usage = manifest["expert_usage"]
        assert sorted(usage) == ["0", "1"]
        for shares in usage.values():
            assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-4)
        assert manifest["expert_usage_min_share"] == min(min(s) for s in usage.values())
    else:
        assert "expert_usage" not in manifest
        assert manifest["total_params"] == manifest["active_params"]

    # Loading by path gives a HookedTransformer and tokenizer that reproduce the manifest.
    model, tokenizer = load_model(out)
    assert type(model).__name__ == "HookedTransformer"
    assert len(tokenizer) == model.cfg.d_vocab == 300
    assert model.to_tokens("def return", prepend_bos=False).shape[0] == 1
    sets = validation_sets(load_sequences(tiny_corpus)["validation"], 8)
    again = evaluate(model, sets)
    for domain, loss in manifest["val_loss"].items():
        assert again.val_loss[domain] == pytest.approx(loss, abs=1e-5)
    assert np.isfinite(list(again.val_loss.values())).all()

    # A rerun with the same settings skips the finished stage.
    assert main(argv) == 0
    assert json.loads((out / "manifest.json").read_text()) == manifest
