"""``torchrun --nproc_per_node 2`` (gloo, CPU) harvests the store one process harvests.

Both ranks run ``tests/store/store_helpers.py`` (the test pair, the same settings as the
session's reference store) with the torch thread count of this process, so every forward pass
sums in the same order as the in-process reference; the stores must then agree byte for byte,
and every batch the reader yields must be equal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossdiff.store import StoreInfo, StoreReader, open_store
from crossdiff.store.harvest import _shard_rows, sequence_order
from tests.store.conftest import CONFIG, store_files

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300


def _torchrun(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "tests.store.store_helpers", str(out), "--threads", str(torch.get_num_threads()),
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(command: list[str]) -> None:
    """Run ``command`` in a session of its own; on timeout kill all its processes."""
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]


def _shards(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "shards").glob("shard-*.safetensors"))


def assert_same_store(store: Path, reference: StoreInfo) -> None:
    """Every file equal, and the reader's batches equal tensor for tensor, in the same order."""
    assert store_files(store) == store_files(reference.path)
    ours = list(StoreReader(open_store(store), batch_size=40, seed=3, normalize=False))
    theirs = list(StoreReader(reference, batch_size=40, seed=3, normalize=False))
    assert len(ours) == len(theirs) > 1
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_take_disjoint_shards_covering_the_order() -> None:
    """Rank r of W takes shards r, r+W, ...: together every sequence once, in harvest order."""
    from crossdiff.store.ranks import Ranks

    order = sequence_order(48, CONFIG)
    shards = list(range(6))
    parts = [Ranks(rank, 4).share(shards) for rank in range(4)]
    assert parts == [[0, 4], [1, 5], [2], [3]]
    taken = sorted(i for part in parts for shard in part for i in _shard_rows(order, shard, CONFIG))
    assert taken == list(range(48))


@pytest.mark.slow
def test_two_processes_harvest_the_one_process_store(tmp_path, reference_store) -> None:
    out = tmp_path / "store"
    _run(_torchrun(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_shards"] == 6
    assert_same_store(out, reference_store)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_resumes_to_the_same_store(tmp_path, reference_store, victim) -> None:
    out, pids = tmp_path / "store", tmp_path / "pids"
    proc = subprocess.Popen(
        _torchrun(out, "--delay", "0.2", "--pid-dir", str(pids)), cwd=REPO, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(_shards(out)) < 2:  # a shard takes >= 0.8 s per rank: 2 of 6 done
            assert proc.poll() is None, "the harvest ended before a rank could be killed"
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.05)
        os.kill(int((pids / f"rank{victim}").read_text()), signal.SIGKILL)
        assert proc.wait(timeout=60) != 0  # torchrun stops the other rank and fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert 2 <= len(_shards(out)) < 6, _shards(out)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    _run(_torchrun(out))
    assert_same_store(out, reference_store)
    assert sorted(open_store(out).manifest["shards"]) == _shards(out)


def test_rank_zero_errors_are_raised_on_every_rank_as_the_same_kind() -> None:
    from crossdiff.errors import ConfigError, StageError
    from crossdiff.store.ranks import _rebuilt

    error = _rebuilt("ConfigError", "bad value")
    assert type(error) is ConfigError and str(error) == "bad value"
    other = _rebuilt("KeyError", "'x'")
    assert type(other) is StageError and "rank 0 failed: KeyError: 'x'" in str(other)


@pytest.mark.slow
def test_a_refused_store_stops_every_rank(tmp_path) -> None:
    """Rank 0 refuses a directory that is not a store; rank 1 raises the same, nobody hangs."""
    out = tmp_path / "store"
    out.mkdir()
    (out / "notes.txt").write_text("not a store")
    proc = subprocess.run(
        _torchrun(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode != 0
    assert proc.stderr.count("is not an activation store") >= 2, proc.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "not a store"
