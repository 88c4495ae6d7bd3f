"""Sparse kernels for a BatchTopK step: only the selected (token, latent) entries are touched.

A BatchTopK batch keeps ``N ≈ k·B`` of the ``B·L`` pre-activations. The encoder forward stays a
dense matmul (every score is needed to choose), but the decoder forward and all three backward
products run on the ``N`` selected entries:

* decode          ``x̂_BC = F_BL @ W_dec_LC``           (a weighted ``embedding_bag`` per token)
* grad of acts    ``g_N = (G_BC @ W_dec_LCᵀ)[rows, cols]`` (sampled dense-dense, SDDMM)
* grad of W_dec   ``F_BLᵀ @ G_BC``                       (a weighted ``embedding_bag`` per latent)
* grad of W_enc   ``(H_BLᵀ @ x_BC)ᵀ`` with H the gradient at the selected entries

Every product accumulates in at least float32 (:func:`compute_dtype`): a bf16 or fp16 crosscoder's
operands are upcast for the product and the result is cast back. This is the only precision rule,
on every device; it also makes the kernels available for half precision on CPU, where
``sparse_sampled_addmm`` has no half-precision kernel and MKL's CSR product none either.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd import Function


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sparse product of ``dtype`` operands runs in: at least float32."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class SparsePattern:
    """Which (token, latent) entries of a ``[B, L]`` latent matrix are selected, grouped by
    token (rows non-decreasing; latents within a token in any order)."""

    rows_N: torch.Tensor
    """Token index of each entry, non-decreasing."""
    cols_N: torch.Tensor
    """Latent index of each entry."""
    n_rows: int
    """``B``."""
    n_cols: int
    """``L``."""
    crow: torch.Tensor | None = None
    """``[B + 1]`` bounds of each token's entries; computed from ``rows_N`` when not given."""

    def __post_init__(self) -> None:
        if self.crow is None:
            self.crow = _offsets(self.rows_N, self.n_rows)

    @classmethod
    def from_flat(cls, flat_N: torch.Tensor, n_rows: int, n_cols: int) -> SparsePattern:
        """A pattern from sorted flat indices ``row·L + col``."""
        return cls(flat_N // n_cols, flat_N % n_cols, n_rows, n_cols)

    @cached_property
    def by_col(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transpose's grouping ``(perm_N, rows_N[perm_N], bounds)``: ``perm_N`` the stable
        order of the entries by latent, ``bounds`` ``[L + 1]`` each latent's run in that order
        (one sort, reused by both transposed products of a step)."""
        keys_N = self.cols_N.int() if self.n_cols < 2**31 else self.cols_N  # int32 sorts faster
        perm_N = torch.sort(keys_N, stable=True).indices
        return perm_N, self.rows_N[perm_N], _offsets(self.cols_N, self.n_cols)

    def csr(self, values_N: torch.Tensor) -> torch.Tensor:
        """The ``[B, L]`` CSR matrix with ``values_N`` at the selected entries."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self.crow, self.cols_N, values_N, (self.n_rows, self.n_cols), check_invariants=False
            )

    def matmul(self, values_N: torch.Tensor, dense_LC: torch.Tensor) -> torch.Tensor:
        """``F @ dense`` -> ``[B, C]`` for F the ``[B, L]`` matrix with ``values_N``."""
        return _bag_sum(self.cols_N, dense_LC, self.crow, values_N)

    def t_matmul(self, values_N: torch.Tensor, dense_BC: torch.Tensor) -> torch.Tensor:
        """``Fᵀ @ dense`` -> ``[L, C]`` for F the ``[B, L]`` matrix with ``values_N``."""
        perm_N, rows_N, bounds = self.by_col
        return _bag_sum(rows_N, dense_BC, bounds, values_N[perm_N])

    def sampled(self, a_BC: torch.Tensor, b_LC: torch.Tensor) -> torch.Tensor:
        """``(a_BC @ b_LCᵀ)[rows, cols]`` -> ``[N]``, computed at the selected entries only."""
        wide = compute_dtype(a_BC.dtype)
        mask = self.csr(torch.zeros(self.rows_N.numel(), dtype=wide, device=a_BC.device))
        a, b = a_BC.to(wide).contiguous(), b_LC.to(wide)
        return torch.sparse.sampled_addmm(mask, a, b.T, beta=0.0).values().to(a_BC.dtype)

    def dense(self, values_N: torch.Tensor) -> torch.Tensor:
        """The ``[B, L]`` dense matrix (for references and the dense kernels)."""
        out = values_N.new_zeros(self.n_rows, self.n_cols)
        out[self.rows_N, self.cols_N] = values_N
        return out


def _offsets(index_N: torch.Tensor, n: int) -> torch.Tensor:
    """``[n + 1]`` bounds of each value's run once ``index_N`` (values ``0..n-1``) is sorted."""
    counts = torch.bincount(index_N, minlength=n)
    out = torch.zeros(n + 1, dtype=torch.long, device=index_N.device)
    torch.cumsum(counts, 0, out=out[1:])
    return out


def _bag_sum(
    index_N: torch.Tensor, table_RC: torch.Tensor, bounds: torch.Tensor, weight_N: torch.Tensor
) -> torch.Tensor:
    """``out[g] = Σ_{n in group g} weight_N[n]·table_RC[index_N[n]]`` for the groups of
    consecutive entries ``bounds[g]:bounds[g+1]`` (one output row per group), in ≥ float32."""
    wide = compute_dtype(table_RC.dtype)
    out = F.embedding_bag(
        index_N,
        table_RC.to(wide),
        bounds,
        mode="sum",
        per_sample_weights=weight_N.to(wide),
        include_last_offset=True,
    )
    return out.to(table_RC.dtype)


class _SelectedPreacts(Function):
    """``pre_N = (x_BC @ W_enc_CL + b_enc_L)[rows, cols]``, given the precomputed values."""

    @staticmethod
    def forward(
        ctx: Any,
        pre_N: torch.Tensor,
        W_enc_CL: torch.Tensor,
        b_enc_L: torch.Tensor,
        x_BC: torch.Tensor,
        pattern: SparsePattern,
    ) -> torch.Tensor:
        ctx.save_for_backward(x_BC)
        ctx.pattern = pattern
        return pre_N.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_N: torch.Tensor) -> tuple[Any, ...]:
        (x_BC,) = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_W = pattern.t_matmul(grad_N, x_BC).T  # [C, L]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(pattern.n_cols, dtype=grad_N.dtype, device=grad_N.device)
            grad_b.index_add_(0, pattern.cols_N, grad_N)
        return None, grad_W, grad_b, None, None


class _ColumnPreacts(Function):
    """``(x_BC @ W_enc_CL + b_enc_L)[:, cols_D]``, given the precomputed values."""

    @staticmethod
    def forward(
        ctx: Any,
        pre_BD: torch.Tensor,
        W_enc_CL: torch.Tensor,
        b_enc_L: torch.Tensor,
        x_BC: torch.Tensor,
        cols_D: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(x_BC, cols_D)
        ctx.shape = W_enc_CL.shape
        return pre_BD.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_BD: torch.Tensor) -> tuple[Any, ...]:
        x_BC, cols_D = ctx.saved_tensors
        grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_W = grad_BD.new_zeros(ctx.shape)
            grad_W.index_copy_(1, cols_D, x_BC.T @ grad_BD)
        if ctx.needs_input_grad[2]:
            grad_b = grad_BD.new_zeros(ctx.shape[1])
            grad_b.index_copy_(0, cols_D, grad_BD.sum(0))
        return None, grad_W, grad_b, None, None


class _SparseDecode(Function):
    """``x̂_BC = F_BL @ W_dec_LC`` with F the sparse matrix of ``acts_N`` on ``pattern``."""

    @staticmethod
    def forward(
        ctx: Any, acts_N: torch.Tensor, W_dec_LC: torch.Tensor, pattern: SparsePattern
    ) -> torch.Tensor:
        ctx.save_for_backward(acts_N, W_dec_LC)
        ctx.pattern = pattern
        return pattern.matmul(acts_N, W_dec_LC)

    @staticmethod
    def backward(ctx: Any, grad_BC: torch.Tensor) -> tuple[Any, ...]:
        acts_N, W_dec_LC = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_acts = grad_W = None
        grad_BC = grad_BC.contiguous()
        if ctx.needs_input_grad[0]:
            grad_acts = pattern.sampled(grad_BC, W_dec_LC)
        if ctx.needs_input_grad[1]:
            grad_W = pattern.t_matmul(acts_N, grad_BC)  # [L, C]
        return grad_acts, grad_W, None


def selected_preacts(
    pre_N: torch.Tensor,
    W_enc_CL: torch.Tensor,
    b_enc_L: torch.Tensor,
    x_BC: torch.Tensor,
    pattern: SparsePattern,
) -> torch.Tensor:
    """Pre-activations at ``pattern``'s entries, differentiable w.r.t. the encoder (sparsely)."""
    return _SelectedPreacts.apply(pre_N, W_enc_CL, b_enc_L, x_BC, pattern)


def column_preacts(
    pre_BD: torch.Tensor,
    W_enc_CL: torch.Tensor,
    b_enc_L: torch.Tensor,
    x_BC: torch.Tensor,
    cols_D: torch.Tensor,
) -> torch.Tensor:
    """Pre-activations of the latents ``cols_D`` (distinct) for every token, differentiable
    w.r.t. those latents' encoder columns and biases (one dense product in the backward)."""
    return _ColumnPreacts.apply(pre_BD, W_enc_CL, b_enc_L, x_BC, cols_D)


def sparse_decode(
    acts_N: torch.Tensor, W_dec_LC: torch.Tensor, pattern: SparsePattern
) -> torch.Tensor:
    """``[B, C]`` reconstruction from the selected activations (no bias), sparse backward."""
    return _SparseDecode.apply(acts_N, W_dec_LC, pattern)


def dense_preacts(
    W_enc_CL: torch.Tensor, b_enc_L: torch.Tensor, x_BC: torch.Tensor, pattern: SparsePattern
) -> torch.Tensor:
    """The same values as :func:`selected_preacts` by a plain dense matmul (reference path)."""
    pre_BL = torch.addmm(b_enc_L, x_BC, W_enc_CL)
    return pre_BL[pattern.rows_N, pattern.cols_N]


def dense_decode(
    acts_N: torch.Tensor, W_dec_LC: torch.Tensor, pattern: SparsePattern
) -> torch.Tensor:
    """The same values as :func:`sparse_decode` through a dense ``[B, L]`` matrix (reference)."""
    f_BL = torch.zeros(
        pattern.n_rows, pattern.n_cols, dtype=acts_N.dtype, device=acts_N.device
    ).index_put((pattern.rows_N, pattern.cols_N), acts_N)
    return f_BL @ W_dec_LC
