"""Latent sharding: each process holds a contiguous slice of the dictionary.

The processes form a ``data × latent`` grid (:class:`Mesh`): global rank
``r = data_rank · latent_shards + latent_rank``. The processes of one *latent group* (one
data rank) see the same tokens and each hold latents ``[lo, hi)`` of the dictionary: those
latents' encoder columns, decoder rows (the designated shared block's tied rows wherever they
fall), encoder biases, Adam moments and dead-latent counters. The decoder bias, the input
scales and θ are replicated. A *data group* (one latent rank) holds the same slice for
different tokens and averages its gradients.

A forward pass computes the local pre-activations ``[B, l]``, selects the global BatchTopK
entries (:meth:`Mesh.topk_keep`: exact, with the one-process tie rule on the global flat index
``token·L + latent``), decodes the local entries and sums the partial reconstructions over the
latent group (:func:`sum_over_latents`; its backward is the identity, since every process of
the group then computes the same loss). Aux-k is global too (:func:`sharded_aux_k_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function

from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.model import Crosscoder, ForwardOutput
from crossdiff.crosscoder.sparse import SparsePattern, selected_preacts, sparse_decode
from crossdiff.errors import ConfigError

PARAMS = ("W_dec_shared_SD", "W_dec_excl_XC", "W_enc_CL", "b_enc_L", "b_dec_C")
"""A crosscoder's parameters in registration order (the order of its Adam state)."""

LATENT_DIM = {
    "W_dec_shared_SD": 0,
    "W_dec_excl_XC": 0,
    "W_enc_CL": 1,
    "b_enc_L": 0,
    "tokens_since_fired": 0,
}
"""The latent axis of every sharded tensor; the others are replicated."""

SUPPORTED_KERNELS = ("sparse",)
"""Kernels a latent-sharded step runs (the dense reference kernels are one-process only)."""


def shard_bounds(dict_size: int, shards: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each shard: contiguous, sizes differing by at most one latent."""
    return [(r * dict_size // shards, (r + 1) * dict_size // shards) for r in range(shards)]


class Mesh:
    """The ``data × latent`` process grid and its collectives (no-ops on a 1 × 1 grid).

    ``axis`` is ``"latent"`` (the processes sharing tokens), ``"data"`` (the processes sharing a
    slice of the dictionary) or ``"world"``.
    """

    def __init__(self, latent_shards: int) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if self.active else 1
        rank = dist.get_rank() if self.active else 0
        self._setup(rank, world, latent_shards)
        self.groups: dict[str, Any] = {"world": None, "latent": None, "data": None}
        if self.active and 1 < self.latent_shards < world:
            S, W = self.latent_shards, world
            for d in range(self.data_world):  # every rank creates every group, in one order
                group = dist.new_group([d * S + j for j in range(S)])
                if d == self.data_rank:
                    self.groups["latent"] = group
            for j in range(S):
                group = dist.new_group(list(range(j, W, S)))
                if j == self.latent_rank:
                    self.groups["data"] = group

    def _setup(self, rank: int, world: int, latent_shards: int) -> None:
        if latent_shards < 1 or world % latent_shards:
            raise ConfigError(
                f"latent_shards must be a positive divisor of the {world} processes, "
                f"got {latent_shards}"
            )
        self.world, self.rank = world, rank
        self.latent_shards, self.data_world = latent_shards, world // latent_shards
        self.latent_rank, self.data_rank = rank % latent_shards, rank // latent_shards

    def size(self, axis: str) -> int:
        """Processes along ``axis``."""
        return {"world": self.world, "latent": self.latent_shards, "data": self.data_world}[axis]

    def all_gather(self, t: torch.Tensor, axis: str) -> list[torch.Tensor]:
        """Every process's ``t`` along ``axis`` (same shape on all), in rank order."""
        if self.size(axis) == 1:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.size(axis))]
        dist.all_gather(out, t.contiguous(), group=self.groups[axis])
        return out

    def sum_(self, t: torch.Tensor, axis: str) -> torch.Tensor:
        """Sum ``t`` along ``axis`` in place and return it."""
        if self.size(axis) > 1:
            dist.all_reduce(t, group=self.groups[axis])
        return t

    def gather_latents(self, t: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor | None:
        """On the first process: the first latent group's slices of ``t`` (``sizes[j]`` along
        ``dim`` on latent rank j) concatenated along ``dim`` (a ``gather``); None elsewhere. The
        other data ranks hold copies and take no part."""
        if self.data_rank != 0:
            return None
        if self.latent_shards == 1:
            return t
        width = max(sizes)
        pad = list(t.shape)
        pad[dim] = width - t.shape[dim]
        padded = torch.cat([t, t.new_zeros(pad)], dim=dim).contiguous()
        first = self.latent_rank == 0  # global rank 0: only it receives the slices
        parts = [torch.empty_like(padded) for _ in sizes] if first else None
        dist.gather(padded, parts, dst=0, group=self.groups["latent"])
        if parts is None:
            return None
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim)

    def topk_keep(
        self, flat_N: torch.Tensor, scores_N: torch.Tensor, k_total: int
    ) -> tuple[torch.Tensor, float]:
        """``(mask_N, t)``: which local candidates the global BatchTopK keeps, and t, the
        ``k_total``-th largest score of the whole grid (−inf if fewer: all are kept).

        ``flat_N`` are the candidates' global flat indices ``token·L + latent`` (increasing),
        ``scores_N`` their scores. Every score above t is kept; of the scores equal to t the
        ``k_total − #(> t)`` with the lowest global flat index are, as in one process."""
        top = scores_N.topk(min(k_total, scores_N.numel()), sorted=False).values
        padded = scores_N.new_full((k_total,), -torch.inf)
        padded[: top.numel()] = top
        gathered = torch.cat(self.all_gather(padded, "world"))
        t = float(gathered.topk(k_total, sorted=False).values.min())
        if t == -float("inf"):
            return torch.ones_like(scores_N, dtype=torch.bool), t
        above_N, tie_N = scores_N > t, scores_N == t
        counts = self.sum_(torch.stack([above_N.sum(), tie_N.sum()]), "world").tolist()
        free = k_total - int(counts[0])
        if int(counts[1]) > free:  # more ties than slots: the lowest flat indices win
            mine = flat_N[tie_N][:free]
            slots = torch.full((free,), torch.iinfo(torch.long).max, device=flat_N.device)
            slots[: mine.numel()] = mine
            cut = torch.cat(self.all_gather(slots, "world")).kthvalue(free).values
            tie_N &= flat_N <= cut
        return above_N | tie_N, t


class _SumOverLatents(Function):
    """Sum over the latent group; backward is the identity (each process's loss is the same
    function of the sum, so its gradient w.r.t. the sum is its gradient w.r.t. its part)."""

    @staticmethod
    def forward(ctx: Any, part: torch.Tensor, mesh: Mesh) -> torch.Tensor:
        return mesh.sum_(part.detach().clone(), "latent")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return grad, None


def sum_over_latents(part: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """The latent group's sum of ``part`` (every shard's partial reconstruction), differentiable."""
    return _SumOverLatents.apply(part, mesh)


class ShardedCrosscoder(nn.Module):
    """Latents ``[lo, hi)`` of a :class:`Crosscoder`: the same formulas on a slice.

    Parameters keep the full model's names with local sizes (``W_enc_CL`` is ``[C, l]``,
    ``W_dec_shared_SD`` holds the shared latents inside the slice, ``W_dec_excl_XC`` the others);
    ``b_dec_C``, ``input_scale_M`` and ``threshold`` are replicated.
    """

    KEYS = (*PARAMS, "input_scale_M", "threshold")
    """Every tensor of its state dict (the full model's names)."""

    # the one-process formulas, reused (they read only cfg, the buffers and the given tensors)
    concat_inputs = Crosscoder.concat_inputs
    fit_input_scales_ = Crosscoder.fit_input_scales_
    scores = Crosscoder.scores
    _candidates = Crosscoder._candidates
    _split_C = Crosscoder._split_C

    def __init__(self, cfg: CrosscoderConfig, mesh: Mesh) -> None:
        super().__init__()
        if sum(cfg.n_dedicated) or cfg.sites:
            raise ConfigError(
                "latent sharding holds free and designated shared latents over one site per "
                f"model; got n_dedicated {list(cfg.n_dedicated)} and sites {list(cfg.sites)} "
                "(train this crosscoder with latent_shards = 1)"
            )
        if cfg.dict_size < mesh.latent_shards:
            raise ConfigError(
                f"latent_shards = {mesh.latent_shards} exceeds the dictionary's "
                f"{cfg.dict_size} latents"
            )
        self.cfg, self.mesh = cfg, mesh
        self.bounds = shard_bounds(cfg.dict_size, mesh.latent_shards)
        self.lo, self.hi = self.bounds[mesh.latent_rank]
        n_shared, n_local = self._shared_count(self.lo, self.hi), self.hi - self.lo
        dtype = getattr(torch, cfg.dtype)
        D = cfg.d_models[0] if cfg.n_shared else 0
        C = cfg.d_total
        self.W_dec_shared_SD = nn.Parameter(torch.zeros(n_shared, D, dtype=dtype))
        self.W_dec_excl_XC = nn.Parameter(torch.zeros(n_local - n_shared, C, dtype=dtype))
        self.W_enc_CL = nn.Parameter(torch.zeros(C, n_local, dtype=dtype))
        self.b_enc_L = nn.Parameter(torch.zeros(n_local, dtype=dtype))
        self.b_dec_C = nn.Parameter(torch.zeros(C, dtype=dtype))
        self.register_buffer("input_scale_M", torch.ones(len(cfg.models)))
        self.register_buffer("threshold", torch.zeros(()))

    def _shared_count(self, lo: int, hi: int) -> int:
        return max(0, min(hi, self.cfg.n_shared) - lo)

    # ------------------------------------------------------------------ full <-> slice

    def _range(self, name: str, bounds: tuple[int, int]) -> tuple[int, int]:
        """Where latents ``bounds`` lie along tensor ``name``'s latent axis."""
        (lo, hi), S = bounds, self.cfg.n_shared
        if name == "W_dec_shared_SD":
            return min(lo, S), min(hi, S)
        if name == "W_dec_excl_XC":
            return max(lo, S) - S, max(hi, S) - S
        return lo, hi

    def slice_of(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """This shard's part of the full model's tensor ``name`` (or of any tensor of its shape:
        an Adam moment, the dead-latent counters); replicated tensors whole."""
        if name not in LATENT_DIM:
            return t
        a, b = self._range(name, (self.lo, self.hi))
        return t.narrow(LATENT_DIM[name], a, b - a)

    def gather_full(self, name: str, t: torch.Tensor) -> torch.Tensor | None:
        """The full tensor ``name`` from every shard's slice ``t`` on the first process, None
        elsewhere (a collective of the first latent group): the inverse of :meth:`slice_of`."""
        if name not in LATENT_DIM:
            return t if self.mesh.rank == 0 else None
        sizes = [b - a for a, b in (self._range(name, bounds) for bounds in self.bounds)]
        return self.mesh.gather_latents(t, LATENT_DIM[name], sizes)

    @torch.no_grad()
    def load_full_(self, model: Crosscoder) -> ShardedCrosscoder:
        """Copy this shard's slice of ``model``'s weights and buffers in."""
        full = model.state_dict()
        for name, t in self.state_dict().items():
            t.copy_(self.slice_of(name, full[name]))
        return self

    @torch.no_grad()
    def gather_into_(self, model: Crosscoder) -> None:
        """On the first process, write every shard's weights into ``model`` (a collective)."""
        for name, t in self.state_dict().items():
            full = self.gather_full(name, t)
            if full is not None:
                model.state_dict()[name].copy_(full)

    # ------------------------------------------------------------------ layout

    def decoder_weights(self) -> torch.Tensor:
        """``W_dec_lC``: this shard's shared rows tiled across models, then its free rows."""
        if self.W_dec_shared_SD.shape[0] == 0:
            return self.W_dec_excl_XC
        tiled = self.W_dec_shared_SD.repeat(1, len(self.cfg.models))
        return torch.cat([tiled, self.W_dec_excl_XC], dim=0)

    def decoder_norms(self, W_dec_LC: torch.Tensor) -> torch.Tensor:
        """``[l, M]``: ‖d_i^m‖ of this shard's latents."""
        return torch.stack([w.norm(dim=1) for w in self._split_C(W_dec_LC)], dim=1)

    @torch.no_grad()
    def rank_weights(self, W_dec_LC: torch.Tensor) -> torch.Tensor:
        """``ρ_l`` of this shard's latents (detached)."""
        if not self.cfg.rank_by_decoder_norm:
            return torch.ones(self.hi - self.lo, device=self.b_enc_L.device)
        return self.decoder_norms(W_dec_LC).sum(dim=1)

    # ------------------------------------------------------------------ forward

    @torch.no_grad()
    def preacts(self, x_BC: torch.Tensor) -> torch.Tensor:
        """This shard's dense pre-activations ``[B, l]``."""
        return torch.addmm(self.b_enc_L, x_BC, self.W_enc_CL)

    @torch.no_grad()
    def batch_topk(
        self, pre_Bl: torch.Tensor, k_total: int, rho_l: torch.Tensor, first_token: int = 0
    ) -> tuple[SparsePattern, float, torch.Tensor]:
        """The global BatchTopK restricted to this shard: ``(pattern, t, pre_N)`` as
        :meth:`Crosscoder.batch_topk` returns them, the pattern in local latent indices.
        ``first_token`` is the global index of this process's first token."""
        B, n_local = pre_Bl.shape
        flat_N, scores_N = self._candidates(pre_Bl, rho_l, k_total)
        rows_N, cols_N = flat_N // n_local, flat_N % n_local
        global_N = (rows_N + first_token) * self.cfg.dict_size + self.lo + cols_N
        keep_N, t = self.mesh.topk_keep(global_N, scores_N, k_total)
        flat_N = flat_N[keep_N]
        return SparsePattern.from_flat(flat_N, B, n_local), t, pre_Bl.view(-1)[flat_N]

    def forward(
        self, batch: dict[str, torch.Tensor], k: float, global_batch: int, first_token: int
    ) -> ForwardOutput:
        """Training forward on this process's tokens: ``recon_BC`` is the whole dictionary's
        reconstruction (summed over the latent group), ``pattern``/``acts_N``/``pre_BL``/
        ``W_dec_LC`` are this shard's."""
        x_BC = self.concat_inputs(batch)
        pre_Bl = self.preacts(x_BC)
        k_total = max(1, round(k * global_batch))
        W_dec_lC = self.decoder_weights()
        pattern, t, pre_N = self.batch_topk(
            pre_Bl, k_total, self.rank_weights(W_dec_lC), first_token
        )
        acts_N = selected_preacts(pre_N, self.W_enc_CL, self.b_enc_L, x_BC, pattern)
        part_BC = sparse_decode(acts_N, W_dec_lC, pattern)
        recon_BC = sum_over_latents(part_BC, self.mesh) + self.b_dec_C
        return ForwardOutput(x_BC, recon_BC, pattern, acts_N, pre_Bl, W_dec_lC, t)


def sharded_aux_k_loss(
    model: ShardedCrosscoder, out: ForwardOutput, dead_l: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """The aux-k loss of :func:`crossdiff.crosscoder.train.aux_k_loss` over the global dead
    sub-dictionary: per token the ``aux_k`` largest dead pre-activations of all shards (the
    per-token cut found by gathering each shard's top ``aux_k``; an entry tying the cut is kept,
    where one process's ``topk`` keeps an arbitrary one of the tied), decoded sparsely on each
    shard and summed over the latent group; the normaliser is global over the data group."""
    mesh = model.mesh
    n_dead = int(mesh.sum_(dead_l.sum().reshape(1), "latent"))
    if n_dead == 0:
        return out.recon_BC.new_zeros(())
    kk = min(aux_k, n_dead)
    dead_idx = dead_l.nonzero()[:, 0].to(out.pre_BL.device)
    pre_BD = out.pre_BL.index_select(1, dead_idx)
    B = pre_BD.shape[0]
    top_BK = pre_BD.new_full((B, kk), -torch.inf)
    mine = min(kk, dead_idx.numel())
    top_BK[:, :mine] = pre_BD.topk(mine, dim=1, sorted=False).values
    cut_B = torch.cat(mesh.all_gather(top_BK, "latent"), dim=1).topk(kk, dim=1).values[:, -1]
    keep_BD = (pre_BD >= cut_B[:, None]) & (pre_BD > 0)
    rows_N, j_N = keep_BD.nonzero().unbind(1)
    pattern = SparsePattern(rows_N, dead_idx[j_N], B, dead_l.numel())
    pre_N = selected_preacts(pre_BD[rows_N, j_N], model.W_enc_CL, model.b_enc_L, out.x_BC, pattern)
    e_hat_BC = sum_over_latents(sparse_decode(pre_N.relu(), out.W_dec_LC, pattern), mesh)
    e_BC = (out.x_BC - out.recon_BC).detach()
    wide = e_BC.to(torch.promote_types(e_BC.dtype, torch.float32))
    count = torch.tensor([B], dtype=torch.float64, device=e_BC.device)
    sums = mesh.sum_(
        torch.cat([count, wide.sum(0).double(), wide.pow(2).sum()[None].double()]), "data"
    )
    n, sum_C, sq = sums[0], sums[1:-1], sums[-1]
    denominator = (sq - sum_C.pow(2).sum() / n).clamp_min(1e-12)
    numerator = (e_BC - e_hat_BC).pow(2).sum()
    scale = min(n_dead / aux_k, 1.0) * mesh.data_world
    return numerator * scale / denominator.to(numerator.dtype)


def sharded_sparsity_penalty(model: ShardedCrosscoder, out: ForwardOutput) -> torch.Tensor:
    """This shard's share of λ·Σ_i f_i·w_i·Σ_m ‖d_i^m‖ per token (the latent group sums to the
    one-process penalty)."""
    cfg = model.cfg
    weight_l = model.decoder_norms(out.W_dec_LC).sum(dim=1)
    n_shared = model._shared_count(model.lo, model.hi)
    if n_shared:
        ratio = torch.ones_like(weight_l)
        ratio[:n_shared] = cfg.shared_sparsity_ratio
        weight_l = weight_l * ratio
    per_entry = out.acts_N * weight_l[out.pattern.cols_N]
    return cfg.sparsity_coeff * per_entry.sum() / out.x_BC.shape[0]
