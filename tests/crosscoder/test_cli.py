"""``crossdiff train-crosscoder`` on a small harvested store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossdiff.cli import main
from crossdiff.store import StoreConfig, harvest
from tests.store.store_helpers import make_sequences, pair


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cc_store") / "store"
    harvest(pair(), ["0.mlp_out", "1.resid_post"], make_sequences(), out,
            StoreConfig(batch_sequences=4, shard_sequences=8))  # fmt: skip
    return out


def test_train_crosscoder_writes_metrics_and_resumes(store: Path, tmp_path: Path) -> None:
    argv = ["train-crosscoder", "--acts", str(store), "--out", str(tmp_path / "cc"),
            "--site", "dense=0.mlp_out", "--site", "moe=0.mlp_out", "--steps", "40",
            "--batch-size", "60", "--expansion", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "cc" / "metrics.json").read_text())
    assert set(metrics["fve"]) == {"dense", "moe"} and metrics["train_steps"] == 40
    assert 0 < metrics["fve_pooled"] <= 1 and metrics["eval_window_tokens"] == 8 * 15
    assert metrics["l0"] > 0 and 0 <= metrics["dead_fraction"] < 1
    assert metrics["ce_recovered"] is None  # this store records no model paths
    assert (tmp_path / "cc" / "crosscoder" / "cfg.json").is_file()
    assert main(argv) == 0  # complete: skipped


def test_bad_store_inputs_are_named(store: Path, tmp_path: Path, capsys) -> None:
    base = ["train-crosscoder", "--acts", str(store), "--out", str(tmp_path / "x"), "--steps", "2"]
    assert main([*base, "--models", "dense,gpt"]) == 2
    assert "unknown model (not in the store) 'gpt'" in capsys.readouterr().err
    assert main(base) == 2
    assert "has several sites" in capsys.readouterr().err
    sites = ["--site", "dense=0.mlp_out", "--site", "moe=0.mlp_out"]
    assert main([*base, *sites, "--k", "800"]) == 2  # dictionary 16 x 48 = 768
    assert "k = 800 must be below the dictionary size 768" in capsys.readouterr().err
    assert main([*base, *sites, "--batch-size", "5000"]) == 2
    assert "fewer tokens than one batch" in capsys.readouterr().err
