"""The aux-k loss on dead latents, and the measured rule that picks how it is computed.

Per token the ``aux_k`` dead latents with the largest pre-activations (the step's own, no second
encoder pass) reconstruct the detached residual. Two exact paths compute the reconstruction ê and
its gradients:

* ``"sparse"``: each token's chosen entries with a positive pre-activation (a ReLU of a
  non-positive value adds nothing to ê and passes no gradient) through the sparse kernels of
  :mod:`crossdiff.crosscoder.sparse`: cost ∝ B·aux_k·C, whatever the number of dead latents;
* ``"dense"``: dense products over the dead sub-dictionary (``[B, n_dead]`` latents, the unchosen
  masked to 0): cost ∝ B·n_dead·C at a dense product's much higher speed per multiply-add.

Which is faster depends on the machine's kernels (on 2 CPU cores a dense multiply-add is several
times cheaper than a sparse one; on another machine of the same kind the ratio differed enough to
double the step), so :class:`AuxPathRule` measures both once, in the training process, on the
step's own tensors, and records the crossover ``dense_share``: dense iff ``n_dead ≤
dense_share·aux_k``. The recorded value travels in the checkpoint, so a resumed run takes the
paths the uninterrupted one took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from crossdiff.crosscoder.distributed import Collectives
from crossdiff.crosscoder.model import Crosscoder, ForwardOutput
from crossdiff.crosscoder.sparse import (
    SparsePattern,
    column_preacts,
    dense_decode,
    dense_preacts,
    selected_preacts,
    sparse_decode,
)

AuxPath = Literal["sparse", "dense"]

DEFAULT_DENSE_SHARE = 4.0
"""The rule before (or without) a measurement: dense iff ``n_dead ≤ 4·aux_k``."""

SMALL_WORK = 2**24
"""Below this many multiply-adds of a dense product (B·n_dead·C) aux-k is dense unmeasured: both
paths take well under a millisecond, fixed costs decide, and the dense path has fewer."""

CALIBRATION_REPEATS = 2
"""Timed runs of each path (after one untimed warm-up); the smaller time counts."""


@dataclass
class AuxPathRule:
    """Dense over the dead sub-dictionary iff ``n_dead ≤ dense_share·aux_k``, else sparse.

    ``dense_share`` is measured by :meth:`calibrate` the first time aux-k runs (when
    ``measure``), from the time of each path on that step's tensors: with t_d the dense path's
    time at n_dead₀ dead latents and t_s the sparse path's at aux_k₀ chosen ones,
    ``dense_share = (t_s/aux_k₀) / (t_d/n_dead₀)``, the share at which both cost the same.
    """

    dense_share: float | None = None
    """The measured (or restored) crossover; None until measured."""
    measure: bool = True
    """Measure at the first aux-k step; else :data:`DEFAULT_DENSE_SHARE` until one is set."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """What the measurement saw: each path's time (ms) and the sizes it ran at."""
    last_path: AuxPath | None = None
    """The path the latest aux-k step took (not saved)."""

    def path(self, n_dead: int, kk: int) -> AuxPath:
        """The path for ``n_dead`` dead latents of which ``kk`` are chosen per token (at least
        ``kk`` of them: with no top-k to do the dense path does the sparse one's work)."""
        share = DEFAULT_DENSE_SHARE if self.dense_share is None else self.dense_share
        return "dense" if n_dead <= share * kk else "sparse"

    def describe(self) -> str:
        """One line: the crossover, where it came from, and the measured times."""
        if self.dense_share is None:
            return f"dense iff n_dead <= {DEFAULT_DENSE_SHARE:g}*aux_k (default, not measured)"
        t = self.timings_ms
        measured = (
            f"; measured dense {t['dense_ms']:.1f} ms vs sparse {t['sparse_ms']:.1f} ms at "
            f"B {t['tokens']:.0f}, n_dead {t['n_dead']:.0f}, aux_k {t['kk']:.0f}"
            if t
            else " (restored from a checkpoint)"
        )
        return f"dense iff n_dead <= {self.dense_share:.2f}*aux_k{measured}"

    @torch.no_grad()
    def calibrate(
        self,
        model: Crosscoder,
        out: ForwardOutput,
        dead_idx: torch.Tensor,
        kk: int,
        coll: Collectives,
    ) -> None:
        """Time both paths (forward and backward) on this step's tensors and set
        ``dense_share``; averaged over processes so that every one takes the same path."""
        n_dead = dead_idx.numel()
        x_BC = out.x_BC.detach()
        leaves = [
            t.detach().clone().requires_grad_()
            for t in (model.W_enc_CL, model.b_enc_L, out.W_dec_LC)
        ]
        grad_BC = torch.randn(
            x_BC.shape, generator=torch.Generator().manual_seed(0), dtype=x_BC.dtype
        ).to(x_BC.device)
        pre_BD = out.pre_BL.index_select(1, dead_idx)
        runs: dict[str, Callable[[], torch.Tensor]] = {
            "dense": lambda: _dense_e_hat(*leaves, x_BC, pre_BD, dead_idx, kk),
            "sparse": lambda: _sparse_e_hat(*leaves, x_BC, pre_BD, dead_idx, kk),
        }
        best = {name: float("inf") for name in runs}
        for repeat in range(CALIBRATION_REPEATS + 1):
            for name, run in runs.items():
                seconds = _timed(lambda r=run: _forward_backward(r, grad_BC, leaves), x_BC)
                if repeat:  # the first round warms up
                    best[name] = min(best[name], seconds)
        share = max(1.0, (best["sparse"] / kk) / (best["dense"] / n_dead))
        self.dense_share = float(coll.sum_(torch.tensor([share], dtype=torch.float64))) / (
            coll.world
        )
        self.timings_ms = {
            "dense_ms": best["dense"] * 1e3,
            "sparse_ms": best["sparse"] * 1e3,
            "tokens": float(x_BC.shape[0]),
            "n_dead": float(n_dead),
            "kk": float(kk),
        }


def _forward_backward(
    run: Callable[[], torch.Tensor], grad_BC: torch.Tensor, leaves: list[torch.Tensor]
) -> None:
    with torch.enable_grad():
        e_hat_BC = run()
        torch.autograd.backward(e_hat_BC, grad_BC)
    for t in leaves:
        t.grad = None


def _timed(fn: Callable[[], None], like: torch.Tensor) -> float:
    """Seconds ``fn`` takes: the process's CPU time on the CPU (steadier on a shared machine),
    wall time with synchronisation on an accelerator."""
    if like.device.type == "cpu":
        start = time.process_time()
        fn()
        return time.process_time() - start
    torch.cuda.synchronize(like.device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(like.device)
    return time.perf_counter() - start


def aux_k_loss(
    model: Crosscoder,
    out: ForwardOutput,
    dead_L: torch.Tensor,
    aux_k: int,
    coll: Collectives,
    kernels: str = "sparse",
    rule: AuxPathRule | None = None,
    path: AuxPath | None = None,
) -> torch.Tensor:
    """‖e − ê‖² / ‖e − ē‖² · min(n_dead / aux_k, 1): the top ``aux_k`` dead latents per token
    (by the step's own pre-activations) reconstruct the detached residual e (no decoder bias);
    the normaliser is global. With the sparse kernels the path is ``path`` if given, else
    dense for a small product (:data:`SMALL_WORK`), else ``rule``'s (measured at its first
    use), else the default rule; ``kernels="dense"`` is the plain reference implementation."""
    dead_idx = dead_L.nonzero()[:, 0].to(out.pre_BL.device)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return out.recon_BC.new_zeros(())
    kk = min(aux_k, n_dead)
    B, L = out.pre_BL.shape
    if kernels == "sparse":
        if path is None and B * n_dead * out.x_BC.shape[1] <= SMALL_WORK:
            path = "dense"
        if path is None:
            rule = AuxPathRule(measure=False) if rule is None else rule
            if rule.dense_share is None and rule.measure:
                rule.calibrate(model, out, dead_idx, kk, coll)
            path = rule.path(n_dead, kk)
        if rule is not None:
            rule.last_path = path
        pre_BD = out.pre_BL.index_select(1, dead_idx)
        make = _dense_e_hat if path == "dense" else _sparse_e_hat
        e_hat_BC = make(model.W_enc_CL, model.b_enc_L, out.W_dec_LC, out.x_BC, pre_BD, dead_idx, kk)
    else:
        j_BK = out.pre_BL.index_select(1, dead_idx).topk(kk, dim=1, sorted=False).indices
        rows_N = torch.arange(B, device=j_BK.device).repeat_interleave(kk)
        pattern = SparsePattern(rows_N, dead_idx[j_BK.reshape(-1)], B, L)
        pre_N = dense_preacts(model.W_enc_CL, model.b_enc_L, out.x_BC, pattern)
        e_hat_BC = dense_decode(pre_N.relu(), out.W_dec_LC, pattern)
    e_BC = (out.x_BC - out.recon_BC).detach()
    wide = e_BC.to(torch.promote_types(e_BC.dtype, torch.float32))  # no copy for fp32/fp64
    count = torch.tensor([B], dtype=torch.float64, device=e_BC.device)
    sums = coll.sum_(torch.cat([count, wide.sum(0).double(), wide.pow(2).sum()[None].double()]))
    n, sum_C, sq = sums[0], sums[1:-1], sums[-1]
    denominator = (sq - sum_C.pow(2).sum() / n).clamp_min(1e-12)
    numerator = (e_BC - e_hat_BC).pow(2).sum()
    scale = min(n_dead / aux_k, 1.0) * coll.world
    return numerator * scale / denominator.to(numerator.dtype)


def aux_entries(
    pre_BD: torch.Tensor, dead_idx: torch.Tensor, kk: int, n_latents: int
) -> tuple[SparsePattern, torch.Tensor]:
    """The pattern (latent indices into ``n_latents``) and pre-activations of each token's top
    ``kk`` dead latents with a positive pre-activation, grouped by token. No top-k when no
    token has more than ``kk`` positive ones; no filtering when all chosen are positive."""
    B = pre_BD.shape[0]
    positive_BD = pre_BD > 0
    if int(positive_BD.sum(1).max()) <= kk:
        rows_N, j_N = positive_BD.nonzero().unbind(1)
        return SparsePattern(rows_N, dead_idx[j_N], B, n_latents), pre_BD[rows_N, j_N]
    vals_BK, j_BK = pre_BD.topk(kk, dim=1, sorted=False)
    vals_N, cols_N = vals_BK.reshape(-1), dead_idx[j_BK.reshape(-1)]
    rows_N = torch.arange(B, device=pre_BD.device).repeat_interleave(kk)
    if bool((vals_BK > 0).all()):  # kk per token: the row offsets are known
        crow = torch.arange(0, B * kk + 1, kk, device=pre_BD.device)
        return SparsePattern(rows_N, cols_N, B, n_latents, crow), vals_N
    positive_N = vals_N > 0
    return SparsePattern(rows_N[positive_N], cols_N[positive_N], B, n_latents), vals_N[positive_N]


def _sparse_e_hat(
    W_enc_CL: torch.Tensor,
    b_enc_L: torch.Tensor,
    W_dec_LC: torch.Tensor,
    x_BC: torch.Tensor,
    pre_BD: torch.Tensor,
    dead_idx: torch.Tensor,
    kk: int,
) -> torch.Tensor:
    """ê through the sparse kernels on each token's chosen positive entries."""
    pattern, vals_N = aux_entries(pre_BD, dead_idx, kk, W_dec_LC.shape[0])
    pre_N = selected_preacts(vals_N, W_enc_CL, b_enc_L, x_BC, pattern)
    return sparse_decode(pre_N.relu(), W_dec_LC, pattern)


def _dense_e_hat(
    W_enc_CL: torch.Tensor,
    b_enc_L: torch.Tensor,
    W_dec_LC: torch.Tensor,
    x_BC: torch.Tensor,
    pre_BD: torch.Tensor,
    dead_idx: torch.Tensor,
    kk: int,
) -> torch.Tensor:
    """ê over the dead sub-dictionary: ReLU of each token's top ``kk`` dead pre-activations
    (all of them when ``kk`` = n_dead) times the dead decoder rows, by dense products."""
    pre_BD = column_preacts(pre_BD, W_enc_CL, b_enc_L, x_BC, dead_idx)
    acts_BD = pre_BD.relu()
    if kk < dead_idx.numel():
        j_BK = pre_BD.detach().topk(kk, dim=1, sorted=False).indices
        keep_BD = torch.zeros_like(acts_BD, dtype=torch.bool).scatter_(1, j_BK, True)
        acts_BD = acts_BD * keep_BD
    return acts_BD @ W_dec_LC.index_select(0, dead_idx)
