"""Latent sharding: the global BatchTopK on a simulated grid, and torchrun runs against one process.

The selection tests run a ``data × latent`` grid in threads (only ``all_gather`` and ``sum_``
are simulated) on adversarial tied scores and check the kept entries against the sorted
one-process reference of test_batch_topk. The torchrun tests train on 2 (latent 2) and 4
(data 2 × latent 2) gloo processes and compare the loss curve, the final weights, a fixed
tied batch's selection, each process's bytes of parameters + Adam state, and a resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, TrainConfig
from crossdiff.crosscoder.sharded import Mesh, ShardedCrosscoder, shard_bounds
from crossdiff.crosscoder.sharded_train import train_sharded
from crossdiff.crosscoder.train import train
from crossdiff.errors import ConfigError

from .conftest import planted, small_crosscoder
from .test_batch_topk import DTYPES, integer_preacts, reference, rho_cases

REPO = Path(__file__).resolve().parents[2]
L = 48


class ThreadMesh(Mesh):
    """A grid of threads sharing memory: the real selection code runs, only the world-wide
    ``all_gather`` (and ``sum_`` through it) is simulated."""

    def __init__(self, rank: int, world: int, latent_shards: int, slots: list, barrier) -> None:
        self.active = True
        self._setup(rank, world, latent_shards)
        self.slots, self.barrier = slots, barrier

    def all_gather(self, t: torch.Tensor, axis: str) -> list[torch.Tensor]:
        assert axis == "world", axis  # the selection only talks to the whole grid
        self.slots[self.rank] = t.clone()
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def sum_(self, t: torch.Tensor, axis: str) -> torch.Tensor:
        t.copy_(torch.stack(self.all_gather(t, axis)).sum(0))
        return t


def select_on_grid(pre: torch.Tensor, rho: torch.Tensor, k_total: int, grid, theta: float):
    """Global flat indices kept when a ``(data, latent)`` grid of threads each selects on its
    block of tokens × latents."""
    data_world, latent_shards = grid
    world = data_world * latent_shards
    slots: list = [None] * world
    barrier = threading.Barrier(world)
    got: list[list[int]] = [[] for _ in range(world)]
    cfg = small_crosscoder(rank_by_decoder_norm=False).cfg
    size = pre.shape[0] // data_world

    def rank_main(r: int) -> None:
        mesh = ThreadMesh(r, world, latent_shards, slots, barrier)
        shard = ShardedCrosscoder(cfg, mesh)
        shard.threshold.fill_(theta)
        first = mesh.data_rank * size
        local = pre[first : first + size, shard.lo : shard.hi].contiguous()
        pattern, _, pre_N = shard.batch_topk(local, k_total, rho[shard.lo : shard.hi], first)
        assert torch.equal(pre_N, local[pattern.rows_N, pattern.cols_N])
        got[r] = ((pattern.rows_N + first) * L + pattern.cols_N + shard.lo).tolist()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    return sorted(i for part in got for i in part)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grid", [(1, 2), (1, 3), (2, 2), (3, 1)], ids=str)
def test_grid_selection_follows_the_one_process_tie_rule(dtype: torch.dtype, grid) -> None:
    """Ties at the cut span shards and data ranks; the lowest global flat indices win."""
    gen = torch.Generator().manual_seed(11)
    B = 6 * grid[0]
    for rho in rho_cases(gen):
        pre = integer_preacts(gen, B, dtype)
        n_pos = int(((torch.relu(pre) * rho.to(dtype)) > 0).sum())
        for k_total in (1, 5, 4 * B, n_pos, n_pos + 3):
            for theta in (0.0, 2.0, 100.0):
                kept = select_on_grid(pre, rho, k_total, grid, theta)
                assert kept == reference(pre, rho, k_total), (k_total, theta)


def test_grid_selection_on_continuous_scores_is_torch_topk() -> None:
    gen = torch.Generator().manual_seed(12)
    pre = torch.randn(16, L, generator=gen) * 2
    rho = torch.rand(L, generator=gen) + 0.5
    expected = sorted((torch.relu(pre) * rho).view(-1).topk(64).indices.tolist())
    assert select_on_grid(pre, rho, 64, (2, 3), 1.0) == expected


def test_shards_cover_the_dictionary_and_slices_round_trip() -> None:
    assert shard_bounds(48, 3) == [(0, 16), (16, 32), (32, 48)]
    assert shard_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    full = small_crosscoder(n_shared=20)
    pieces = []
    for r in range(3):
        mesh = Mesh.__new__(Mesh)
        mesh._setup(r, 3, 3)
        pieces.append(ShardedCrosscoder(full.cfg, mesh).load_full_(full))
    # the shared block (20 latents) spans shards 0 and 1: their tied rows concatenate back
    shared = torch.cat([p.W_dec_shared_SD for p in pieces])
    assert [p.W_dec_shared_SD.shape[0] for p in pieces] == [16, 4, 0]
    assert torch.equal(shared, full.W_dec_shared_SD)
    assert torch.equal(torch.cat([p.W_dec_excl_XC for p in pieces]), full.W_dec_excl_XC)
    assert torch.equal(torch.cat([p.W_enc_CL for p in pieces], dim=1), full.W_enc_CL)
    W_dec_LC = torch.cat([p.decoder_weights() for p in pieces])
    assert torch.equal(W_dec_LC, full.decoder_weights())


def test_one_shard_trains_as_the_one_process_trainer() -> None:
    cfg = TrainConfig(steps=8, lr=3e-3, warmup_steps=2, dead_tokens=128, aux_k=6)
    plain, sharded = small_crosscoder(sparsity_coeff=0.05), small_crosscoder(sparsity_coeff=0.05)
    a = train(plain, planted(noise=0.05).batches(64, 8, seed=5), cfg)
    b = train_sharded(sharded, planted(noise=0.05).batches(64, 8, seed=5), cfg, 1)
    assert any(s.aux > 0 for s in a.history)
    got = torch.tensor([[s.loss, s.fve, s.l0, s.dead_fraction] for s in b.history])
    want = torch.tensor([[s.loss, s.fve, s.l0, s.dead_fraction] for s in a.history])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_unsupported_settings_are_refused_in_one_line() -> None:
    model = small_crosscoder()
    batches = planted().batches(64, 2, seed=0)
    with pytest.raises(ConfigError, match="positive divisor of the 1 processes, got 2"):
        train_sharded(model, batches, TrainConfig(steps=2), 2)
    with pytest.raises(ConfigError, match="sparse kernels only"):
        train_sharded(model, batches, TrainConfig(steps=2, kernels="dense"), 1)
    mesh = Mesh.__new__(Mesh)
    mesh._setup(0, 64, 64)
    with pytest.raises(ConfigError, match="exceeds the dictionary's 48 latents"):
        ShardedCrosscoder(model.cfg, mesh)


def torchrun(n_proc: int, latent_shards: int, work: Path) -> dict:
    """Run :mod:`tests.crosscoder.sharded_worker` under torchrun; its JSON record."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = work / "record.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_proc),
        "--standalone", "-m", "tests.crosscoder.sharded_worker", str(out), str(work),
        str(latent_shards),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, failure(proc.stderr)
    return json.loads(out.read_text())


def failure(stderr: str) -> str:
    """The workers' own error lines first (torchrun's summary buries them), then the tail."""
    own = [line for line in stderr.splitlines() if "Error" in line or "terminate" in line]
    return "\n".join(own[:20]) + "\n---\n" + stderr[-2000:]


def check_against_one_process(record: dict, work: Path) -> None:
    """Everything a sharded run must share with the one-process run."""
    from tests.crosscoder import sharded_worker as worker

    model = worker.initial()
    result = train(model, worker.data(), worker.SHARDED_TRAIN)
    assert any(s.aux > 0 for s in result.history), "aux-k never engaged"
    # loss curve: same arithmetic up to float summation order (measured: max relative
    # difference 9e-8 on 2 processes, 1.4e-7 on 2 x 2)
    single = torch.tensor([s.loss for s in result.history])
    torch.testing.assert_close(torch.tensor(record["losses"]), single, rtol=1e-5, atol=1e-6)
    assert record["l0"] == [s.l0 for s in result.history]
    torch.testing.assert_close(
        torch.tensor(record["dead"]), torch.tensor([s.dead_fraction for s in result.history])
    )
    for name, value in model.state_dict().items():
        torch.testing.assert_close(
            torch.tensor(record["weights"][name]), value, rtol=1e-5, atol=1e-6
        )
    # a fixed tied batch: the grid keeps exactly what one process keeps
    assert record["ties"] == reference(worker.tied_preacts(), torch.ones(L), 200)
    # parameters + Adam state per process: about half of one process's (measured 0.496, 0.504)
    one = worker.memory(0)
    for held in record["memory"]:
        assert 0.45 < held / one < 0.55, (held, one)
    # stopped after 6 batches and resumed: the uninterrupted curve and weights, exactly
    assert record["resumed"] == record["losses"]
    saved = Crosscoder.from_pretrained(work / "resumed" / "checkpoint" / "model")
    for name, value in saved.state_dict().items():
        assert torch.equal(torch.tensor(record["resumed_weights"][name]), value)
        assert record["resumed_weights"][name] == record["weights"][name]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux CPU")
def test_two_latent_shards_give_the_one_process_run(tmp_path: Path) -> None:
    check_against_one_process(torchrun(2, 2, tmp_path), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux CPU")
def test_data_times_latent_grid_gives_the_one_process_run(tmp_path: Path) -> None:
    check_against_one_process(torchrun(4, 2, tmp_path), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux CPU")
def test_stage_with_latent_shards_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    from crossdiff.cli import main
    from crossdiff.store import StoreConfig, harvest
    from tests.store.store_helpers import make_sequences, pair

    store = tmp_path / "store"
    harvest(pair(), ["0.mlp_out"], make_sequences(), store,
            StoreConfig(batch_sequences=4, shard_sequences=8))  # fmt: skip
    args = ["train-crosscoder", "--acts", str(store), "--steps", "16", "--batch-size", "60",
            "--expansion", "4", "--checkpoint-every", "8", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
    ]
    cmd = [
        *launch,
        "-m",
        "crossdiff",
        *args,
        "--out",
        str(tmp_path / "two"),
        "--latent-shards",
        "2",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, failure(proc.stderr)
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["train_steps"] == 16
    for key in ("fve_pooled", "l0", "dead_fraction"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    a = Crosscoder.from_pretrained(tmp_path / "one" / "crosscoder")
    b = Crosscoder.from_pretrained(tmp_path / "two" / "crosscoder")
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    # the sharding is not a setting: the finished stage is found complete without it
    assert main([*args, "--out", str(tmp_path / "two")]) == 0


def test_latent_shards_must_be_positive() -> None:
    from crossdiff.crosscoder.stage import CrosscoderStageConfig

    with pytest.raises(ConfigError, match="latent_shards must be a positive integer, got 0"):
        CrosscoderStageConfig(latent_shards=0)


def test_a_crosscoder_of_other_tensors_is_refused() -> None:
    """A crosscoder kind the sharding does not know (another parameter) is named, not split."""
    model = small_crosscoder()
    model.register_parameter("W_extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ConfigError, match="train it with latent_shards = 1"):
        train_sharded(model, planted().batches(64, 2, seed=0), TrainConfig(steps=2), 1)
