"""``crossdiff harvest`` end to end on the small corpus, models loaded through a stub loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.cli import harvest as harvest_cli
from crossdiff.cli import main
from crossdiff.corpus import load_tokenizer
from crossdiff.store import open_store
from tests.store.store_helpers import TinyAdapter, VocabTokenizer, tiny_transformer


@pytest.fixture
def stub_loader(monkeypatch, small_corpus: Path) -> dict[str, TinyAdapter]:
    """``load_adapter(path)``: a tiny dense model for paths ending in 'dense', MoE otherwise."""
    tokenizer = load_tokenizer(small_corpus / "tokenizer")
    loaded: dict[str, TinyAdapter] = {}

    def load(path: str, manager, device: str | None = None) -> TinyAdapter:
        model = tiny_transformer(32) if path.endswith("dense") else tiny_transformer(48, moe=True)
        loaded[path] = TinyAdapter(model, VocabTokenizer() if "other" in path else tokenizer)
        return loaded[path]

    monkeypatch.setattr(harvest_cli, "load_adapter", load)
    return loaded


def _args(corpus: Path, out: Path, *models: str) -> list[str]:
    args = ["harvest", "--corpus", str(corpus), "--out", str(out), "--no-progress"]
    for model in models:
        args += ["--model", model]
    return [
        *args,
        "--site",
        "0.mlp_out",
        "--site",
        "moe:1.resid_post",
        "--max-sequences",
        "12",
        "--batch-sequences",
        "4",
        "--shard-sequences",
        "8",
        "--dtype",
        "bf16",
    ]


def test_harvest_command_writes_a_store(small_corpus, stub_loader, tmp_path, capsys) -> None:
    out = tmp_path / "store"
    assert main(_args(small_corpus, out, "base=m/dense", "moe=m/moe")) == 0
    info = open_store(out)
    assert info.sites == {"base": ["0.mlp_out"], "moe": ["0.mlp_out", "1.resid_post"]}
    assert info.dims["moe"]["1.resid_post"] == 48
    assert info.tokens == 12 * 31 and info.dtype == "bf16"
    assert info.manifest["config"]["record"]["models"] == {"base": "m/dense", "moe": "m/moe"}
    printed = capsys.readouterr().out
    assert "372 tokens" in printed and "norm factor" in printed
    assert main(_args(small_corpus, out, "base=m/dense", "moe=m/moe")) == 0  # finished: no-op


def test_harvest_command_errors_are_clear(small_corpus, stub_loader, tmp_path, capsys) -> None:
    out = tmp_path / "store"
    assert main(_args(small_corpus, out, "base=m/dense", "moe=m/other-moe")) == 2
    assert "'moe' use a tokenizer different from the corpus tokenizer" in capsys.readouterr().err
    assert not out.exists()
    alignment = tmp_path / "ids.npy"
    np.save(alignment, np.arange(512))
    aligned = _args(small_corpus, out, "base=m/dense", "moe=m/other-moe")
    assert main([*aligned, "--alignment", f"moe={alignment}"]) == 0
    assert open_store(out).tokens == 12 * 31
    assert main(_args(small_corpus, out, "base")) == 2
    assert "not of the form NAME=PATH" in capsys.readouterr().err
    bad_site = [*_args(small_corpus, out, "base=m/dense", "moe=m/moe"), "--site", "9.mlp_out"]
    assert main(bad_site) == 2
    assert "unknown site '9.mlp_out'" in capsys.readouterr().err


def test_models_run_in_bf16_when_asked(small_corpus, stub_loader, tmp_path) -> None:
    """--model-dtype bf16 casts every model; its activations are fp32's to bf16 precision."""
    from crossdiff.store import load_shard

    args = _args(small_corpus, tmp_path / "fp32", "base=m/dense", "moe=m/moe")
    assert main(args) == 0
    half = _args(small_corpus, tmp_path / "bf16", "base=m/dense", "moe=m/moe")
    assert main([*half, "--model-dtype", "bf16"]) == 0
    assert all(
        p.dtype == torch.bfloat16 for a in stub_loader.values() for p in a.model.parameters()
    )
    assert open_store(tmp_path / "bf16").manifest["config"]["record"]["model_dtype"] == "bf16"
    assert "model_dtype" not in open_store(tmp_path / "fp32").manifest["config"]["record"]
    full = load_shard(open_store(tmp_path / "fp32").shard_paths()[0])
    cast = load_shard(open_store(tmp_path / "bf16").shard_paths()[0])
    for key in (k for k in full if k.startswith("act/")):
        a, b = full[key].float(), cast[key].float()
        error = (a - b).norm() / a.norm()
        assert 0 < error < 0.05, (key, error)  # computed in bf16, not merely stored in it
