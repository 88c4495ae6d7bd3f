"""The crosscoder: per-model encoders summed into one BatchTopK code, per-model decoders."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from crossdiff.checkpoints import load_tensors
from crossdiff.config import from_dict
from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.sparse import (
    SparsePattern,
    dense_decode,
    dense_preacts,
    selected_preacts,
    sparse_decode,
)
from crossdiff.errors import ConfigError
from crossdiff.stages import save_safetensors

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "model.safetensors"

CANDIDATE_FRACTION = 0.9
"""BatchTopK first keeps scores above this fraction of θ; if fewer than k·B pass, the bound is
halved (three times at most) and finally dropped, so the selection is always exact."""

PREFILTER_MARGIN = 0.98
"""The candidate pre-filter compares ``pre`` with ``0.98·lo/ρ``: a score ReLU(pre)·ρ rounds by
at most 2⁻⁸ relative (bf16), so every score above lo passes; scores then decide exactly."""

Gather = Callable[[torch.Tensor, int], tuple[float, int]]
"""``(local candidate scores, k_total) -> (t, n_ties)``: t the k_total-th largest score over all
processes, n_ties how many of this process's scores equal to t it keeps (see
:meth:`crossdiff.crosscoder.distributed.Collectives.topk_cut`)."""


@dataclass
class ForwardOutput:
    """What a training forward pass produces (in normalised units)."""

    x_BC: torch.Tensor
    """Normalised inputs of every model, concatenated."""
    recon_BC: torch.Tensor
    """Reconstruction of ``x_BC`` (decoder bias included), differentiable."""
    pattern: SparsePattern
    """The (token, latent) entries BatchTopK kept."""
    acts_N: torch.Tensor
    """Activations at the kept entries, differentiable w.r.t. the encoder."""
    pre_BL: torch.Tensor
    """Dense pre-activations, detached (the aux-k loss picks dead latents from them)."""
    W_dec_LC: torch.Tensor
    """The decoder matrix used, differentiable (shared block tiled); reused by aux-k."""
    batch_threshold: float
    """The smallest kept score of the (global) batch; feeds the inference threshold EMA."""


class Crosscoder(nn.Module):
    r"""A BatchTopK crosscoder over ``M`` models with ``S`` designated shared latents.

    With x̃_m = s_m·x_m each model's activation scaled by a fixed input scale s_m (fitted so
    that E‖x̃_m‖² = D_m), and d_i^m the decoder vector of latent i for model m:

        pre_i   = Σ_m x̃_m · W_enc^m[:, i] + b_enc_i                       (dense, all latents)
        score_i = ReLU(pre_i) · ρ_i,   ρ_i = Σ_m ‖d_i^m‖ (or 1 if not ranking by decoder norm)
        train:  f_i = ReLU(pre_i) if score_i is among the k·B largest scores of the batch else 0
        infer:  f_i = ReLU(pre_i) if score_i > θ else 0,  θ = EMA of the batch's smallest kept score
        x̂_m    = (Σ_i f_i d_i^m + b_dec^m) / s_m

    Latents ``0..S-1`` are the designated shared block: d_i^m is ONE parameter for every m
    (tied, so the models must have equal d_model when S > 0). Only the decoder is tied.
    Then come the dedicated blocks (``n_dedicated[m]`` latents per model m): only d_i^m is a
    parameter, d_i^{m'} for every other model is the constant 0; with ``dedicated_encoder_own``
    their encoder weights from the other models are masked to exactly 0 too. The rest are free.

    With several sites per model (``cfg.sites``) x_m is the concatenation of model m's sites,
    each input block (model × site) with its own input scale; ‖d_i^m‖ is over all its sites.
    ``input_scale_M`` holds one scale per input block (M of them for a single site).
    """

    def __init__(self, cfg: CrosscoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        S, C = cfg.n_shared, cfg.d_total
        gen = torch.Generator().manual_seed(cfg.seed)
        W_shared_SD = torch.randn(S, cfg.widths[0] if S else 0, generator=gen)
        W_excl_XC = torch.randn(cfg.n_free, C, generator=gen)
        self.W_dec_shared_SD = nn.Parameter(_unit_rows(W_shared_SD))
        self.W_dec_excl_XC = nn.Parameter(
            torch.cat([_unit_rows(w) for w in self._split_C(W_excl_XC)], dim=1)
        )
        # dedicated latents: only their own model's decoder block is a parameter
        self.W_dec_dedicated = nn.ParameterList(
            nn.Parameter(_unit_rows(torch.randn(n, width, generator=gen)))
            for n, width in zip(cfg.n_dedicated, cfg.widths, strict=False)
        )
        # encoder = 0.1 · decoderᵀ: the first reconstructions are small, not noise larger than x
        self.W_enc_CL = nn.Parameter(0.1 * self.decoder_weights().detach().T.contiguous())
        self.b_enc_L = nn.Parameter(torch.zeros(cfg.dict_size))
        self.b_dec_C = nn.Parameter(torch.zeros(C))
        dtype = getattr(torch, cfg.dtype)
        for p in self.parameters():  # drawn in float32, so every dtype starts from the same draw
            p.data = p.data.to(dtype)
        # float32 whatever the weights' dtype: a bf16 θ could not follow its EMA's small steps
        self.register_buffer("input_scale_M", torch.ones(len(cfg.inputs)))
        self.register_buffer("threshold", torch.zeros(()))
        self._encoder_mask_CL: torch.Tensor | None = None
        if cfg.dedicated_encoder_own and sum(cfg.n_dedicated):
            self._encoder_mask_CL = self.encoder_mask()
            with torch.no_grad():
                self.W_enc_CL.mul_(self._encoder_mask_CL.to(dtype))
            self.W_enc_CL.register_hook(self._mask_encoder_grad)

    def encoder_mask(self) -> torch.Tensor:
        """``[C, L]`` bool: False where a dedicated latent would read another model's columns."""
        mask_CL = torch.ones(self.cfg.d_total, self.cfg.dict_size, dtype=torch.bool)
        offsets = self.offsets
        for m, (start, stop) in enumerate(self.cfg.dedicated_ranges):
            mask_CL[:, start:stop] = False
            mask_CL[offsets[m] : offsets[m + 1], start:stop] = True
        return mask_CL

    def _mask_encoder_grad(self, grad_CL: torch.Tensor) -> torch.Tensor:
        """Zero the gradient of masked encoder weights: with zero weights, zero gradients and
        Adam's moments starting at zero, Adam's step there is exactly zero forever."""
        mask = self._encoder_mask_CL
        if mask.device != grad_CL.device:
            mask = self._encoder_mask_CL = mask.to(grad_CL.device)
        return grad_CL * mask

    # ------------------------------------------------------------------ layout

    @property
    def offsets(self) -> list[int]:
        """Start of each model's columns in the concatenated width ``C`` (and C at the end)."""
        out = [0]
        for width in self.cfg.widths:
            out.append(out[-1] + width)
        return out

    @property
    def input_offsets(self) -> list[int]:
        """Start of each input block's columns in ``C`` (and C at the end)."""
        out = [0]
        for _, _, _, d in self.cfg.inputs:
            out.append(out[-1] + d)
        return out

    def _split_C(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Split the last axis of ``t`` into one view per model (all its sites)."""
        return list(torch.split(t, list(self.cfg.widths), dim=-1))

    def _split_inputs(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Split the last axis of ``t`` into one view per input block (model × site)."""
        return list(torch.split(t, [d for _, _, _, d in self.cfg.inputs], dim=-1))

    def decoder_weights(self) -> torch.Tensor:
        """``W_dec_LC``: the shared block tiled across models, the dedicated blocks (zeros
        outside their model: constants, not parameters), then the free latents."""
        blocks = []
        if self.cfg.n_shared:
            blocks.append(self.W_dec_shared_SD.repeat(1, len(self.cfg.models)))
        if len(self.W_dec_dedicated):
            offsets = self.offsets
            C = self.cfg.d_total
            for m, W_ND in enumerate(self.W_dec_dedicated):
                left = W_ND.new_zeros(W_ND.shape[0], offsets[m])
                right = W_ND.new_zeros(W_ND.shape[0], C - offsets[m + 1])
                blocks.append(torch.cat([left, W_ND, right], dim=1))
        if not blocks:
            return self.W_dec_excl_XC
        return torch.cat([*blocks, self.W_dec_excl_XC], dim=0)

    def decoder_norms(self, W_dec_LC: torch.Tensor | None = None) -> torch.Tensor:
        """``[L, M]``: ‖d_i^m‖ for every latent and model, over all the model's sites (of
        ``W_dec_LC`` if given)."""
        W_dec_LC = self.decoder_weights() if W_dec_LC is None else W_dec_LC
        return torch.stack([w.norm(dim=1) for w in self._split_C(W_dec_LC)], dim=1)

    def decoder_norms_by_input(self, W_dec_LC: torch.Tensor | None = None) -> torch.Tensor:
        """``[L, I]``: the decoder norm of every latent into every input block (model × site)."""
        W_dec_LC = self.decoder_weights() if W_dec_LC is None else W_dec_LC
        return torch.stack([w.norm(dim=1) for w in self._split_inputs(W_dec_LC)], dim=1)

    @torch.no_grad()
    def rank_weights(self, W_dec_LC: torch.Tensor | None = None) -> torch.Tensor:
        """``ρ_L``: Σ_m ‖d_i^m‖ if ranking by decoder norm, else ones (detached)."""
        if not self.cfg.rank_by_decoder_norm:
            return torch.ones(self.cfg.dict_size, device=self.b_enc_L.device)
        return self.decoder_norms(W_dec_LC).sum(dim=1)

    # ------------------------------------------------------------------ inputs

    def concat_inputs(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Check ``batch`` (input key -> ``[B, D]``: model names, or ``model/site`` with several
        sites) and return normalised ``x_BC`` on the crosscoder's device, in its dtype."""
        keys = self.cfg.input_keys
        missing = [key for key in keys if key not in batch]
        if missing:
            what = "model(s)" if not self.cfg.sites else "model/site input(s)"
            raise ConfigError(
                f"batch has no activations for {what} {missing}; it has {sorted(batch)}, "
                f"the crosscoder needs {list(keys)}"
            )
        parts, n = [], None
        for i, (name, _, _, d) in enumerate(self.cfg.inputs):
            x = batch[name]
            if x.ndim != 2 or x.shape[1] != d:
                raise ConfigError(
                    f"activations of {name!r} must have shape [batch, {d}], got {list(x.shape)}"
                )
            if n is not None and x.shape[0] != n:
                raise ConfigError(f"models have different batch sizes: {n} and {x.shape[0]}")
            n = x.shape[0]
            s_i = self.input_scale_M[i]
            x = x.detach().to(device=s_i.device, dtype=s_i.dtype)
            parts.append((x * s_i).to(self.b_enc_L.dtype))
        return torch.cat(parts, dim=1)

    def split_outputs(self, y_BC: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised ``[B, C]`` -> input key -> ``[B, D]`` in the models' own units."""
        return {
            key: part / self.input_scale_M[i]
            for i, (key, part) in enumerate(
                zip(self.cfg.input_keys, self._split_inputs(y_BC), strict=True)
            )
        }

    @torch.no_grad()
    def fit_input_scales_(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Set s_i so that E‖s_i·x_i‖² = D_i on ``batch`` for every input block, and b_dec to
        the batch mean."""
        for i, (name, _, _, d) in enumerate(self.cfg.inputs):
            x = batch[name].double()
            self.input_scale_M[i] = (d / x.pow(2).sum(dim=1).mean().clamp_min(1e-30)).sqrt()
        self.b_dec_C.copy_(self.concat_inputs(batch).mean(dim=0))

    # ------------------------------------------------------------------ encode

    @torch.no_grad()
    def preacts(self, x_BC: torch.Tensor) -> torch.Tensor:
        """Dense pre-activations ``[B, L]`` (no gradient)."""
        return torch.addmm(self.b_enc_L, x_BC, self.W_enc_CL)

    def scores(self, pre_BL: torch.Tensor, rho_L: torch.Tensor | None = None) -> torch.Tensor:
        """``score = ReLU(pre)·ρ`` in ``pre``'s dtype: the one formula that training, inference
        and threshold calibration rank by (elementwise, so a subset of entries gets the very
        bits the whole tensor would)."""
        rho_L = self.rank_weights() if rho_L is None else rho_L
        return pre_BL.clamp_min(0) * rho_L.to(pre_BL.dtype)

    @torch.no_grad()
    def batch_topk(
        self,
        pre_BL: torch.Tensor,
        k_total: int,
        gather: Gather | None = None,
        rho_L: torch.Tensor | None = None,
    ) -> tuple[SparsePattern, float, torch.Tensor]:
        """Keep the ``k_total`` largest scores of the batch: the pattern, the threshold (the
        smallest kept score) and the pre-activations ``pre_N`` at the kept entries.

        The selection is exactly the first ``k_total`` entries of the flattened scores sorted
        by decreasing score, equal scores by increasing flat index ``token·L + latent`` (the
        earlier token, then the lower latent, wins a tie); only positive scores are kept, so
        fewer than ``k_total`` only when fewer are positive. With ``gather`` (data parallel)
        the same holds for the global batch, each process's tokens following the previous
        process's. A candidate filter (scores above a bound just under θ, lowered until at
        least ``k_total`` pass) only saves time: it cannot change the selection.
        """
        L = pre_BL.shape[1]
        rho_L = self.rank_weights() if rho_L is None else rho_L
        flat_N, scores_N = self._candidates(pre_BL, rho_L, k_total)
        if gather is not None:
            t, n_ties = gather(scores_N, k_total)
        else:
            t, n_ties = local_cut(scores_N, k_total)
        keep_N = scores_N > t
        tie_N = scores_N == t
        if n_ties < int(tie_N.sum()):  # the first n_ties in flat order win the tie
            tie_N &= tie_N.cumsum(0) <= n_ties
        keep_N |= tie_N
        flat_N = flat_N[keep_N]
        return SparsePattern.from_flat(flat_N, pre_BL.shape[0], L), t, pre_BL.view(-1)[flat_N]

    def _candidates(
        self, pre_BL: torch.Tensor, rho_L: torch.Tensor, k_total: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted flat indices and scores of candidate entries: for the largest bound ``lo``
        tried (``CANDIDATE_FRACTION``·θ, halved three times) that at least ``k_total`` scores
        exceed, the entries that pass a pre-filter on ``pre`` against a bound 2% under lo/ρ (a
        superset of those scoring > lo, in fp32, so the full score matrix is never formed); as
        at least ``k_total`` candidates score > lo, the k_total-th largest score is > lo and
        every entry left out (score ≤ lo) is below the cut. Failing all bounds: the entries
        with a positive score."""
        flat_pre = pre_BL.view(-1)
        L = pre_BL.shape[1]
        rho_wide_L = rho_L.float()
        lo = CANDIDATE_FRACTION * float(self.threshold)
        for _ in range(4 if lo > 0 else 0):
            bound_L = (PREFILTER_MARGIN * lo / rho_wide_L).nan_to_num(nan=torch.inf)
            rows_N, cols_N = (pre_BL > bound_L).nonzero().unbind(1)  # row-major: flat order
            flat_N = rows_N * L + cols_N
            scores_N = self.scores(flat_pre[flat_N], rho_L[cols_N])
            if int((scores_N > lo).sum()) >= k_total:
                return flat_N, scores_N
            lo /= 2
        rows_N, cols_N = (pre_BL > 0).nonzero().unbind(1)
        flat_N = rows_N * L + cols_N
        scores_N = self.scores(flat_pre[flat_N], rho_L[cols_N])
        positive_N = scores_N > 0
        return flat_N[positive_N], scores_N[positive_N]

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        k: float | None = None,
        kernels: Literal["sparse", "dense"] = "sparse",
        gather: Gather | None = None,
        global_batch: int | None = None,
    ) -> ForwardOutput:
        """Training forward: BatchTopK keeps ``k`` (default the config's) latents per token on
        average over the batch, or over ``global_batch`` tokens of all processes with ``gather``."""
        x_BC = self.concat_inputs(batch)
        pre_BL = self.preacts(x_BC)
        n_tokens = global_batch or x_BC.shape[0]
        k_total = max(1, round((k or self.cfg.k) * n_tokens))
        W_dec_LC = self.decoder_weights()
        pattern, t, pre_N = self.batch_topk(pre_BL, k_total, gather, self.rank_weights(W_dec_LC))
        if kernels == "sparse":
            acts_N = selected_preacts(pre_N, self.W_enc_CL, self.b_enc_L, x_BC, pattern)
            recon_BC = sparse_decode(acts_N, W_dec_LC, pattern) + self.b_dec_C
        else:
            acts_N = dense_preacts(self.W_enc_CL, self.b_enc_L, x_BC, pattern)
            recon_BC = dense_decode(acts_N, W_dec_LC, pattern) + self.b_dec_C
        return ForwardOutput(x_BC, recon_BC, pattern, acts_N, pre_BL, W_dec_LC, t)

    @torch.no_grad()
    def encode(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inference latents ``[B, L]``: ReLU(pre) where score > θ, else 0."""
        pre_BL = self.preacts(self.concat_inputs(batch))
        return pre_BL.clamp_min(0) * (self.scores(pre_BL) > self.threshold)

    @torch.no_grad()
    def decode(self, latents_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latents ``[B, L]`` -> each model's reconstruction ``[B, D_m]`` in its own units."""
        return self.split_outputs(latents_BL @ self.decoder_weights() + self.b_dec_C)

    @torch.no_grad()
    def reconstruct(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inference reconstruction of every model from the joint code."""
        return self.decode(self.encode(batch))

    # ------------------------------------------------------------------ save/load

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``cfg.json`` and ``model.safetensors`` into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(self.cfg.record(), indent=2) + "\n")
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_safetensors(path / WEIGHTS_FILE, tensors)  # atomic, with the umask's mode
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> Crosscoder:
        """Load a crosscoder saved by :meth:`save_pretrained`: from ``path`` itself, or from a
        crosscoder stage's directory (``RUN/crosscoder``, whose weights are in its
        ``crosscoder/``)."""
        path = _weights_dir(Path(path))
        cfg = from_dict(CrosscoderConfig, json.loads((path / CONFIG_FILE).read_text()), "cfg.json")
        model = cls(cfg)
        model.load_state_dict(load_tensors(path / WEIGHTS_FILE))
        return model.to(device)


STAGE_WEIGHTS_DIR = "crosscoder"
"""The subdirectory of a crosscoder stage holding its weights (``crosscoder.stage.WEIGHTS_DIR``)."""


def _weights_dir(path: Path) -> Path:
    """``path`` if it holds a saved crosscoder, else its stage subdirectory if that does; a
    :class:`ConfigError` naming every place looked at otherwise."""
    looked = [path, path / STAGE_WEIGHTS_DIR]
    for place in looked:
        if (place / CONFIG_FILE).is_file() and (place / WEIGHTS_FILE).is_file():
            return place
    where = " or ".join(repr(str(p)) for p in looked)
    hint = ""
    if (path / "checkpoint").is_dir():
        hint = (
            f"; {str(path / 'checkpoint')!r} holds an unfinished training's checkpoint "
            "(finish the stage, or load its 'model' subdirectory)"
        )
    elif not path.exists():
        hint = f"; {str(path)!r} does not exist"
    raise ConfigError(f"no crosscoder ({CONFIG_FILE} + {WEIGHTS_FILE}) in {where}{hint}")


def local_cut(scores_N: torch.Tensor, k_total: int) -> tuple[float, int]:
    """``(t, n_ties)`` of one process: t the ``k_total``-th largest of ``scores_N`` (−inf if
    there are fewer: keep them all) and how many scores equal to t to keep."""
    if scores_N.numel() < k_total:
        return -float("inf"), 0
    t = scores_N.kthvalue(scores_N.numel() - k_total + 1).values
    return float(t), k_total - int((scores_N > t).sum())


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    """Rows of ``w`` scaled to unit norm."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
