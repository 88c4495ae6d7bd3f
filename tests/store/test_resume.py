"""A harvest interrupted (killed, failing, or meeting NaNs) resumes to the very same store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.errors import ConfigError, StageError
from crossdiff.stages import read_manifest, write_manifest
from crossdiff.store import (
    NonFiniteActivationError,
    StoreReader,
    StoreVersionError,
    harvest,
    open_store,
)
from tests.store.conftest import CONFIG, SITES, store_files
from tests.store.store_helpers import VocabTokenizer, make_sequences, pair

REPO = Path(__file__).resolve().parents[2]


def _shards(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "shards").glob("shard-*.safetensors"))


def test_killed_harvest_resumes_to_an_identical_store(tmp_path, reference_store) -> None:
    out = tmp_path / "store"
    # same torch thread count as this process, so float sums match the in-process reference
    threads = str(torch.get_num_threads())
    script = [sys.executable, "-m", "tests.store.store_helpers", str(out), "--threads", threads]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*script, "--delay", "0.15"], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_shards(out)) < 2:  # each shard takes >= 0.6 s: kill between 2 and 6
            assert process.poll() is None, "the harvest ended before it could be killed"
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    written = _shards(out)
    assert 2 <= len(written) < 6, written
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(StageError, match="incomplete"):
        StoreReader(out, batch_size=8)
    resumed = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert store_files(out) == store_files(reference_store.path)  # byte for byte, every file


def test_failure_mid_harvest_keeps_written_shards_and_resumes(tmp_path, reference_store) -> None:
    out = tmp_path / "store"
    models = pair()
    models["moe"].fail_on_call = 7  # batch 7 = second batch of shard 3
    with pytest.raises(RuntimeError, match="injected failure"):
        harvest(models, SITES, make_sequences(), out, CONFIG)
    assert _shards(out) == [f"shard-{i:06d}.safetensors" for i in range(3)]
    kept = store_files(out)
    assert harvest(pair(), SITES, make_sequences(), out, CONFIG).complete
    after = store_files(out)
    assert all(after[name] == data for name, data in kept.items() if name.startswith("shards"))
    assert after == store_files(reference_store.path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_activations_stop_with_a_clear_error(tmp_path, reference_store, value) -> None:
    out = tmp_path / "store"
    models = pair()
    models["dense"].corrupt_on_call = 4  # first batch of shard 2
    models["dense"].corrupt_value = value
    kind = "NaN" if value != value else "inf"
    with pytest.raises(NonFiniteActivationError, match=rf"'dense' produced {kind}.*position 3"):
        harvest(models, SITES, make_sequences(), out, CONFIG)
    assert _shards(out) == [f"shard-{i:06d}.safetensors" for i in range(2)]
    reference = store_files(reference_store.path)
    assert all(reference[n] == d for n, d in store_files(out).items() if n.startswith("shards"))


def test_incompatible_store_version_is_refused_and_kept(tmp_path, reference_store) -> None:
    out = tmp_path / "old"
    out.mkdir()
    for name, data in store_files(reference_store.path).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    manifest = read_manifest(out)  # as a future crossdiff would write it
    manifest["format_version"] = 99
    write_manifest(out, manifest.pop("stage"), manifest.pop("config"), **manifest)
    before = store_files(out)
    with pytest.raises(StoreVersionError, match=r"format version 99.*reads format 1"):
        open_store(out)
    with pytest.raises(StoreVersionError, match="left untouched"):
        harvest(pair(), SITES, make_sequences(), out, CONFIG)
    with pytest.raises(StoreVersionError):
        StoreReader(out, batch_size=4)
    assert store_files(out) == before


def test_models_with_different_tokenizers_need_an_alignment(tmp_path) -> None:
    models = pair()
    models["dense"].tokenizer = VocabTokenizer()
    models["moe"].tokenizer = VocabTokenizer(shift=1)  # same strings, other ids
    with pytest.raises(ConfigError, match="'moe' use a tokenizer different"):
        harvest(models, SITES, make_sequences(n=8), tmp_path / "s", CONFIG)
    assert not (tmp_path / "s").exists()
    alignment = (np.arange(512) + 1) % 512  # corpus id i is the moe model's id i + 1
    harvest(
        models,
        SITES,
        make_sequences(n=8),
        tmp_path / "s",
        CONFIG,
        corpus_tokenizer=VocabTokenizer(),
        alignments={"moe": alignment},
    )
    dense_seen, moe_seen = models["dense"].seen[0], models["moe"].seen[0]
    assert np.array_equal(moe_seen.numpy(), alignment[dense_seen.numpy()])


def test_corpus_ids_past_a_models_vocabulary_are_refused(tmp_path) -> None:
    sequences = make_sequences(n=8)
    sequences.input_ids[0, 0] = 600  # the tiny models have 512 embeddings
    with pytest.raises(ConfigError, match=r"512 token embeddings.*token id 600"):
        harvest(pair(), SITES, sequences, tmp_path / "s", CONFIG)
