"""Sparse kernels for a BatchTopK step: only the selected (token, latent) entries are touched.

A BatchTopK batch keeps ``N ≈ k·B`` of the ``B·L`` pre-activations. The encoder forward stays a
dense matmul (every score is needed to choose), but the decoder forward and all three backward
products run on the ``N`` selected entries through CSR matmuls:

* decode          ``x̂_BC = F_BL @ W_dec_LC``           (CSR @ dense)
* grad of acts    ``g_N = (G_BC @ W_dec_LCᵀ)[rows, cols]`` (sampled dense-dense, SDDMM)
* grad of W_dec   ``F_BLᵀ @ G_BC``                       (CSR of the transpose @ dense)
* grad of W_enc   ``(H_BLᵀ @ x_BC)ᵀ`` with H the gradient at the selected entries
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import Function


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

    def __post_init__(self) -> None:
        counts = torch.bincount(self.rows_N, minlength=self.n_rows)
        self.crow = torch.zeros(self.n_rows + 1, dtype=torch.long, device=self.rows_N.device)
        torch.cumsum(counts, 0, out=self.crow[1:])
        self.indices_t = torch.stack([self.cols_N, self.rows_N])

    @classmethod
    def from_flat(cls, flat_N: torch.Tensor, n_rows: int, n_cols: int) -> SparsePattern:
        """A pattern from sorted flat indices ``row·L + col``."""
        return cls(flat_N // n_cols, flat_N % n_cols, n_rows, n_cols)

    def csr(self, values_N: torch.Tensor) -> torch.Tensor:
        """The ``[B, L]`` CSR matrix with ``values_N`` at the selected entries."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self.crow, self.cols_N, values_N, (self.n_rows, self.n_cols), check_invariants=False
            )

    def t_matmul(self, values_N: torch.Tensor, dense_BC: torch.Tensor) -> torch.Tensor:
        """``Fᵀ @ dense`` -> ``[L, C]`` for F the ``[B, L]`` matrix with ``values_N``.

        A COO product: on CPU it beats a CSR of the transpose (whose build needs an argsort).
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coo_LB = torch.sparse_coo_tensor(
                self.indices_t, values_N, (self.n_cols, self.n_rows), check_invariants=False
            )
        return torch.sparse.mm(coo_LB, dense_BC)

    def dense(self, values_N: torch.Tensor) -> torch.Tensor:
        """The ``[B, L]`` dense matrix (for references and the dense kernels)."""
        out = values_N.new_zeros(self.n_rows, self.n_cols)
        out[self.rows_N, self.cols_N] = values_N
        return out


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


class _SparseDecode(Function):
    """``x̂_BC = F_BL @ W_dec_LC`` with F the CSR matrix of ``acts_N`` on ``pattern``."""

    @staticmethod
    def forward(
        ctx: Any, acts_N: torch.Tensor, W_dec_LC: torch.Tensor, pattern: SparsePattern
    ) -> torch.Tensor:
        ctx.save_for_backward(acts_N, W_dec_LC)
        ctx.pattern = pattern
        return pattern.csr(acts_N) @ W_dec_LC

    @staticmethod
    def backward(ctx: Any, grad_BC: torch.Tensor) -> tuple[Any, ...]:
        acts_N, W_dec_LC = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_acts = grad_W = None
        grad_BC = grad_BC.contiguous()
        if ctx.needs_input_grad[0]:
            mask = pattern.csr(torch.zeros_like(acts_N))
            grad_acts = torch.sparse.sampled_addmm(mask, grad_BC, W_dec_LC.T, beta=0.0).values()
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
