"""BatchTopK selects exactly what a sort of the flattened scores selects, tie rule included.

The reference ranks ``ReLU(pre)·ρ`` (computed here, on the whole matrix, in the working dtype)
by a stable descending sort: equal scores keep flat order, so the lower ``token·L + latent``
wins a tie. It keeps the first ``min(k·B, positive scores)``. Inputs are adversarial: integer
pre-activations (many ties), all-negative rows, fewer positives than k·B, one token, ρ with
zeros, bf16 and fp16, and every candidate-filter regime (θ = 0, θ at a tie, θ far too high).
"""

from __future__ import annotations

import threading

import pytest
import torch

from crossdiff.crosscoder.distributed import Collectives, tie_share

from .conftest import small_crosscoder

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
L = 48


def reference(pre_BL: torch.Tensor, rho_L: torch.Tensor, k_total: int) -> list[int]:
    """Flat indices kept: a stable descending sort of the flattened scores, positives only."""
    score = (torch.relu(pre_BL) * rho_L.to(pre_BL.dtype)).view(-1)
    order = torch.sort(score, descending=True, stable=True).indices
    n = min(k_total, int((score > 0).sum()))
    return sorted(order[:n].tolist())


def integer_preacts(gen: torch.Generator, B: int, dtype: torch.dtype) -> torch.Tensor:
    """Small integers (exact in every dtype): most scores tie with many others."""
    pre = torch.randint(-4, 6, (B, L), generator=gen).to(dtype)
    if B > 2:
        pre[1] = -torch.rand(L, generator=gen).to(dtype) - 0.5  # an all-negative row
    return pre


def rho_cases(gen: torch.Generator) -> list[torch.Tensor]:
    zeros = torch.randint(0, 3, (L,), generator=gen).float()  # ρ in {0, 1, 2}
    return [torch.ones(L), zeros, torch.rand(L, generator=gen) + 0.5]


def thetas(score: torch.Tensor) -> list[float]:
    """θ = 0 (no filter), a tie value, a value between scores, and one above every score."""
    top = float(score.max()) if score.numel() else 1.0
    return [0.0, 2.0, 2.5, 0.7 * top, 10 * top + 1]


def check(model, pre: torch.Tensor, rho: torch.Tensor, k_total: int) -> None:
    expected = reference(pre, rho, k_total)
    for theta in thetas(torch.relu(pre.float()) * rho):
        model.threshold.fill_(theta)
        pattern, t, pre_N = model.batch_topk(pre, k_total, rho_L=rho)
        got = (pattern.rows_N * L + pattern.cols_N).tolist()
        assert got == expected, f"θ={theta}, k·B={k_total}, {pre.dtype}"
        assert torch.equal(pre_N, pre[pattern.rows_N, pattern.cols_N])
        if len(expected) == k_total:
            kept = torch.relu(pre) * rho.to(pre.dtype)
            assert t == float(kept.view(-1)[expected].min())
        else:
            assert t == -float("inf")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_selection_equals_the_sorted_reference_on_ties(dtype: torch.dtype) -> None:
    model = small_crosscoder(rank_by_decoder_norm=False)
    gen = torch.Generator().manual_seed(0)
    for B in (1, 2, 16, 64):
        for rho in rho_cases(gen):
            pre = integer_preacts(gen, B, dtype)
            n_pos = int(((torch.relu(pre) * rho.to(dtype)) > 0).sum())
            for k_total in {1, max(1, B * 4), n_pos, n_pos + 7, B * L}:
                check(model, pre, rho, k_total)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_selection_equals_torch_topk_on_continuous_scores(dtype: torch.dtype) -> None:
    """Without ties the reference is plain ``torch.topk``; with bf16/fp16 rounding near-ties
    abound and the rule still holds (checked against the sorted reference)."""
    model = small_crosscoder()
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        pre = (torch.randn(32, L, generator=gen) * 2).to(dtype)
        rho = model.rank_weights()
        check(model, pre, rho, 128)
        if dtype == torch.float32:
            score = (torch.relu(pre) * rho).view(-1)
            assert torch.unique(score[score > 0]).numel() == int((score > 0).sum())
            model.threshold.fill_(1.0)
            pattern, _, _ = model.batch_topk(pre, 128, rho_L=rho)
            got = set((pattern.rows_N * L + pattern.cols_N).tolist())
            assert got == set(score.topk(128).indices.tolist())


def test_forward_keeps_exactly_k_per_token_on_average_with_integer_inputs() -> None:
    """The old ``scores >= t`` kept every tie (303 for k·B = 128); now exactly k·B."""
    model = small_crosscoder(rank_by_decoder_norm=False)
    gen = torch.Generator().manual_seed(2)
    pre = integer_preacts(gen, 32, torch.float32)
    model.threshold.fill_(3.0)
    pattern, _, _ = model.batch_topk(pre, 128)
    assert pattern.rows_N.numel() == 128


class ThreadCollectives(Collectives):
    """Collectives of ``world`` threads sharing memory: the real ``topk_cut`` code runs, only
    ``all_gather`` is simulated (each rank posts its tensor; all read them in rank order)."""

    def __init__(self, rank: int, world: int, slots: list, barrier: threading.Barrier) -> None:
        self.active, self.rank, self.world = True, rank, world
        self.slots, self.barrier_ = slots, barrier

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        self.slots[self.rank] = t.clone()
        self.barrier_.wait()
        out = list(self.slots)
        self.barrier_.wait()
        return out


def select_in_threads(model, pre: torch.Tensor, rho: torch.Tensor, k_total: int, world: int):
    """Global flat indices kept when ``world`` ranks each select on their contiguous slice."""
    slots: list = [None] * world
    barrier = threading.Barrier(world)
    got: list[list[int]] = [[] for _ in range(world)]
    size = pre.shape[0] // world

    def rank_main(r: int) -> None:
        coll = ThreadCollectives(r, world, slots, barrier)
        local = pre[r * size : (r + 1) * size]
        pattern, _, _ = model.batch_topk(local, k_total, coll.topk_cut, rho)
        got[r] = ((pattern.rows_N + r * size) * L + pattern.cols_N).tolist()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    return [i for part in got for i in part]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("world", [2, 3])
def test_data_parallel_selection_follows_the_same_tie_rule(dtype: torch.dtype, world: int) -> None:
    model = small_crosscoder(rank_by_decoder_norm=False)
    gen = torch.Generator().manual_seed(3)
    B = 12 * world
    for rho in rho_cases(gen):
        pre = integer_preacts(gen, B, dtype)
        n_pos = int(((torch.relu(pre) * rho.to(dtype)) > 0).sum())
        for k_total in (5, 4 * B, n_pos + 3):
            for theta in (0.0, 2.0, 100.0):
                model.threshold.fill_(theta)
                merged = select_in_threads(model, pre, rho, k_total, world)
                assert merged == reference(pre, rho, k_total), (k_total, theta)


def test_tie_share_fills_slots_in_rank_order() -> None:
    counts = torch.tensor([[3, 4], [5, 2], [0, 6]])  # (> t, = t) per rank, k·B = 12: 4 slots
    assert [tie_share(counts, 12, r) for r in range(3)] == [4, 0, 0]
    assert [tie_share(counts, 17, r) for r in range(3)] == [4, 2, 3]
