"""Held-out evaluation: FVE per model and pooled, inference L0, dead latents, CE recovered.

FVE_m = 1 − Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖² (per model, or per model × site for a crosscoder
over several sites per model), x̄ the mean of the evaluated tokens, sums in
float64 (:class:`FVESums`). The error term is the plain squared error: a reconstruction that is off
by a constant offset loses the offset's share (a variance of the error would forgive it). FVE_m
does not depend on model m's units. The pooled FVE sums numerator and denominator over every
model in the crosscoder's normalised space (each model scaled by its input scale s_m), the space
the training log reports in, so both report the same number on the same batch. The per-token
ratio average (a biased "legacy" form) is NOT used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from crossdiff.adapters import ModelAdapter
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import ConfigError


@dataclass
class EvalResult:
    """Held-out metrics of a crosscoder."""

    fve: dict[str, float]
    """Fraction of variance explained per model (per ``model/site`` with several sites)."""
    fve_pooled: float
    """FVE over every model's dimensions together, in the crosscoder's normalised space."""
    l0: float
    """Mean active latents per token with the inference threshold."""
    dead_fraction: float
    """Share of latents that never fired in the window."""
    n_tokens: int
    """The window: held-out tokens evaluated."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)


class FVESums:
    """Streaming float64 sums for FVE over tokens: Σ‖x − x̂‖², Σx and Σ‖x‖².

    The one implementation of the FVE formula: evaluation and the training log both use it."""

    def __init__(self) -> None:
        self.n = 0
        self.squared_error = 0.0
        self.sum_D: torch.Tensor | float = 0.0
        self.sum_squares = 0.0

    def add(self, x_BD: torch.Tensor, recon_BD: torch.Tensor) -> None:
        """Accumulate the rows of ``x_BD`` and their reconstructions (any device and dtype)."""
        x = x_BD.detach().double()
        err = x - recon_BD.detach().to(x.device).double()
        self.n += x.shape[0]
        self.squared_error += float(err.pow(2).sum())
        self.sum_D = self.sum_D + x.sum(0).cpu()
        self.sum_squares += float(x.pow(2).sum())

    @property
    def total_variance(self) -> float:
        """Σ_t ‖x_t − x̄‖² over the tokens seen."""
        mean_square = float(torch.as_tensor(self.sum_D).pow(2).sum()) / max(self.n, 1)
        return max(self.sum_squares - mean_square, 0.0)

    def fve(self) -> float:
        """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²."""
        return fve_from(self.squared_error, self.total_variance)


def fve_from(squared_error: float, total_variance: float) -> float:
    """FVE from its two sums (NaN when the tokens have no variance)."""
    return 1 - squared_error / total_variance if total_variance > 0 else float("nan")


@torch.no_grad()
def evaluate(
    model: Crosscoder, batches: Iterable[Mapping[str, torch.Tensor]], max_tokens: int | None = None
) -> EvalResult:
    """FVE, inference L0 and dead fraction over ``batches`` (up to ``max_tokens`` tokens)."""
    keys = model.cfg.input_keys
    sums = {key: FVESums() for key in keys}
    fired = torch.zeros(model.cfg.dict_size, dtype=torch.bool)
    active, n = 0, 0
    for batch in batches:
        if max_tokens is not None and n >= max_tokens:
            break
        if max_tokens is not None:
            batch = {k: v[: max_tokens - n] for k, v in batch.items()}
        latents_BL = model.encode(batch)
        recon = model.decode(latents_BL)
        for key in keys:
            sums[key].add(batch[key], recon[key])
        nz_BL = latents_BL > 0
        fired |= nz_BL.any(0).cpu()
        active += int(nz_BL.sum())
        n += latents_BL.shape[0]
    if n == 0:
        raise ConfigError("evaluation got no held-out tokens")
    scale2 = {key: float(s) ** 2 for key, s in zip(keys, model.input_scale_M, strict=True)}
    return EvalResult(
        fve={key: sums[key].fve() for key in keys},
        fve_pooled=fve_from(
            sum(scale2[m] * sums[m].squared_error for m in sums),
            sum(scale2[m] * sums[m].total_variance for m in sums),
        ),
        l0=active / n,
        dead_fraction=1 - float(fired.double().mean()),
        n_tokens=n,
    )


@torch.no_grad()
def calibrate_threshold_(
    model: Crosscoder, batches: Iterable[Mapping[str, torch.Tensor]], max_tokens: int = 100_000
) -> float:
    """Fit θ on held-out ``batches`` so that the inference L0 is k there; returns θ."""
    scores, n = [], 0
    for batch in batches:
        pre_BL = model.preacts(model.concat_inputs(batch)).clamp_min(0)
        score = model.scores(pre_BL).view(-1)
        scores.append(score[score > 0])
        n += pre_BL.shape[0]
        if n >= max_tokens:
            break
    flat = torch.cat(scores)
    k_total = max(1, round(model.cfg.k * n))
    if flat.numel() <= k_total:
        model.threshold.fill_(0.0)
    else:
        model.threshold.fill_(float(flat.topk(k_total + 1).values[-1]))
    return float(model.threshold)


@dataclass
class CERecovered:
    """Next-token cross-entropy of one model with its site clean, zeroed, and reconstructed."""

    ce_clean: float
    ce_zero: float
    ce_spliced: float
    recovered: float
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean)."""


def next_token_ce(logits_BPV: torch.Tensor, tokens_BP: torch.Tensor) -> float:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]`` (float64)."""
    logits = logits_BPV[:, :-1].double().reshape(-1, logits_BPV.shape[-1])
    return float(F.cross_entropy(logits, tokens_BP[:, 1:].reshape(-1)))


@torch.no_grad()
def ce_recovered(
    model: Crosscoder,
    adapters: Mapping[str, ModelAdapter],
    sites: Mapping[str, str],
    tokens_BP: torch.Tensor,
    first_position: int = 0,
) -> dict[str, CERecovered]:
    """Splice each model's reconstruction (from the JOINT code of all models) back at its site.

    Positions before ``first_position`` keep their own activations in both the zeroed and the
    spliced run (e.g. 1 when the crosscoder never saw position 0, as a store drops it).
    """
    missing = [m for m in model.cfg.models if m not in adapters or m not in sites]
    if missing:
        raise ConfigError(f"ce_recovered needs an adapter and a site for model(s) {missing}")
    B, P = tokens_BP.shape
    p0 = first_position
    acts = {}
    for m in model.cfg.models:
        site = adapters[m].site(sites[m])
        captured = adapters[m].capture(tokens_BP, [site.name])[site.name]
        acts[m] = captured[:, p0:].reshape(B * (P - p0), -1)
    recon = model.reconstruct(acts)
    out = {}
    for m in model.cfg.models:
        adapter, site = adapters[m], sites[m]
        recon_BPD = recon[m].reshape(B, P - p0, -1)

        def zero(a: torch.Tensor) -> torch.Tensor:
            return torch.cat([a[:, :p0], torch.zeros_like(a[:, p0:])], dim=1)

        def splice(a: torch.Tensor, r: torch.Tensor = recon_BPD) -> torch.Tensor:
            return torch.cat([a[:, :p0], r.to(a.device, a.dtype).reshape(a[:, p0:].shape)], dim=1)

        clean = next_token_ce(adapter.logits(tokens_BP), tokens_BP)
        zeroed = next_token_ce(adapter.logits_with_replacement(tokens_BP, site, zero), tokens_BP)
        spliced = next_token_ce(adapter.logits_with_replacement(tokens_BP, site, splice), tokens_BP)
        denom = zeroed - clean
        out[m] = CERecovered(
            clean, zeroed, spliced, (zeroed - spliced) / denom if denom else float("nan")
        )
    return out
