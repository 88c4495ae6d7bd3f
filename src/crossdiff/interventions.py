"""Interventions on crosscoder latents: ablate or steer them inside each model, measure the change.

A latent i adds f_i·d_i^m / s_m to model m's activation at the crosscoded site: f_i its activation
in the JOINT code of every model's activation at that token (inference encoder, as the explorer and
the CE-recovered evaluation use it), d_i^m its decoder vector into model m (the crosscoder's
normalised space) and s_m model m's input scale. For a set S of latents:

- **ablate**: a_m ← a_m − Σ_{i∈S} f_i·d_i^m / s_m at every token: the latents' own contribution
  leaves, the reconstruction error and every other latent's contribution stay;
- **steer by α**: a_m ← a_m + α·Σ_{i∈S} d_i^m / s_m at every token (α in the latents' activation
  units: α equal to a latent's largest activation adds what its strongest firing adds).

The edit goes in through the adapter's own hook at the site
(:meth:`~crossdiff.adapters.ModelAdapter.logits_with_replacement`, the one the CE-recovered
splice uses), so every later layer of the model sees it. Positions before ``first_position`` are
left alone (the store drops position 0: the crosscoder never saw it). A latent whose decoder into
model m is zero changes nothing in model m, exactly.

Measured on held-out tokens for every prediction at positions ``first_position … P−2`` (the
positions an edit can reach), per domain and over all (``"all"``):

- ``delta_loss``: mean next-token cross-entropy with the edit minus without, nats per token;
- ``kl``: mean KL(p_clean ‖ p_edited) of the next-token distribution, nats;
- ``kl_active`` (ablation): the mean KL at the positions where at least one latent of S is active
  (the edit's own positions; a rare latent's effect there is not diluted by the tokens it skips).

Shapes: ``B`` sequences, ``P`` positions, ``T`` tokens (B·(P − first_position)), ``L`` latents,
``S`` latents of a set, ``D`` a site's width, ``V`` vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from crossdiff.adapters import ModelAdapter
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import ConfigError

ALL = "all"
"""The key of every domain together in the per-domain results."""
KL_FLOOR = 1e-12
"""A mean KL below this is rounding (equal distributions give ~1e-15): no change."""
KINDS = ("ablate", "steer")


@dataclass(frozen=True)
class Intervention:
    """What to do to a set of latents: ablate them, or steer them by ``alpha``."""

    latents: tuple[int, ...]
    """The latents (indices into the crosscoder's dictionary)."""
    kind: Literal["ablate", "steer"] = "ablate"
    """``ablate``: remove their contribution; ``steer``: add ``alpha`` × their decoder vectors."""
    alpha: float = 0.0
    """Steering only: the activation added to each latent at every token."""

    def __post_init__(self) -> None:
        latents = tuple(self.latents)
        if not latents:
            raise ConfigError("an intervention needs at least one latent, got none")
        for latent in latents:
            if isinstance(latent, bool) or not isinstance(latent, int | np.integer):
                raise ConfigError(f"latents must be integers, got {latent!r}")
        object.__setattr__(self, "latents", tuple(int(i) for i in latents))
        if self.kind not in KINDS:
            raise ConfigError(f"intervention kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not math.isfinite(self.alpha):
            raise ConfigError(f"steering alpha must be a finite number, got {self.alpha!r}")

    def check(self, crosscoder: Crosscoder) -> None:
        """Raise a :class:`ConfigError` unless every latent exists and the crosscoder has one
        site per model (an edit goes in at one site)."""
        n = crosscoder.cfg.dict_size
        bad = [i for i in self.latents if not 0 <= i < n]
        if bad:
            raise ConfigError(f"latent(s) {bad} out of range: the crosscoder has {n} (0..{n - 1})")
        if crosscoder.cfg.sites:
            raise ConfigError(
                f"interventions edit one site per model; this crosscoder reads several "
                f"({list(crosscoder.cfg.sites)})"
            )


def ablate(latents: Sequence[int] | int) -> Intervention:
    """Ablate ``latents`` (one index or several)."""
    return Intervention(_as_tuple(latents), "ablate")


def steer(latents: Sequence[int] | int, alpha: float) -> Intervention:
    """Steer ``latents`` by ``alpha`` (added to each latent's activation at every token)."""
    return Intervention(_as_tuple(latents), "steer", float(alpha))


def _as_tuple(latents: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(latents, int | np.integer) and not isinstance(latents, bool):
        return (int(latents),)
    return tuple(latents)


# ---------------------------------------------------------------- the edit


@torch.no_grad()
def raw_decoder_rows(crosscoder: Crosscoder, latents: Sequence[int]) -> dict[str, torch.Tensor]:
    """Model -> ``[S, D]`` float64 d_i^m / s_m: each latent's decoder vector in the model's own
    units (what one unit of its activation adds to the model's activation)."""
    W_dec_LC = crosscoder.decoder_weights().detach().double().cpu()
    rows = W_dec_LC[torch.as_tensor(list(latents), dtype=torch.long)]
    scales = crosscoder.input_scale_M.detach().double().cpu()
    out = {}
    for i, (key, block) in enumerate(
        zip(crosscoder.cfg.input_keys, crosscoder._split_inputs(rows), strict=True)
    ):
        out[key] = block / scales[i]
    return out


def site_edits(
    crosscoder: Crosscoder, intervention: Intervention, codes_TL: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Model -> ``[T, D]`` float64 what the intervention adds to the model's activation at each of
    ``T`` tokens whose joint code is ``codes_TL``."""
    intervention.check(crosscoder)
    rows = raw_decoder_rows(crosscoder, intervention.latents)
    if intervention.kind == "ablate":
        coeff_TS = -codes_TL[:, list(intervention.latents)].double().cpu()
    else:
        coeff_TS = torch.full((codes_TL.shape[0], len(intervention.latents)), intervention.alpha,
                              dtype=torch.float64)  # fmt: skip
    return {model: coeff_TS @ rows_SD for model, rows_SD in rows.items()}


def edited_logits(
    adapter: ModelAdapter,
    tokens_BP: torch.Tensor,
    site: str,
    edit_TD: torch.Tensor,
    first_position: int = 1,
) -> torch.Tensor:
    """``[B, P, V]`` the model's logits with ``edit_TD`` (``[B·(P − first_position), D]``, batch
    major) added to its activation at ``site`` from ``first_position`` on."""
    p0 = first_position
    B, P = tokens_BP.shape

    def replace(activation: torch.Tensor) -> torch.Tensor:
        edit = edit_TD.reshape(B, P - p0, -1).to(activation.device, activation.dtype)
        return torch.cat([activation[:, :p0], activation[:, p0:] + edit], dim=1)

    return adapter.logits_with_replacement(tokens_BP, site, replace)


@torch.no_grad()
def intervened_logits(
    crosscoder: Crosscoder,
    adapters: Mapping[str, ModelAdapter],
    sites: Mapping[str, str],
    tokens: Mapping[str, torch.Tensor],
    model: str,
    intervention: Intervention,
    first_position: int = 1,
) -> torch.Tensor:
    """``[B, P, V]`` model ``model``'s logits under ``intervention`` (``tokens``: every model's
    ``[B, P]`` ids, from which the joint code is read)."""
    if model not in crosscoder.cfg.models:
        raise ConfigError(
            f"unknown model {model!r}; the crosscoder has {list(crosscoder.cfg.models)}"
        )
    codes_TL = joint_codes(crosscoder, adapters, sites, tokens, first_position)
    edit_TD = site_edits(crosscoder, intervention, codes_TL)[model]
    return edited_logits(adapters[model], tokens[model], sites[model], edit_TD, first_position)


# ---------------------------------------------------------------- measuring


@dataclass
class _Sums:
    """Running sums of one intervention in one model (per domain)."""

    loss_clean: dict[str, float] = field(default_factory=dict)
    loss_edited: dict[str, float] = field(default_factory=dict)
    kl: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    kl_active: float = 0.0
    active: int = 0

    def add(self, domain: str, clean_N, edited_N, kl_N, active_N) -> None:
        for key in (domain, ALL):
            self.loss_clean[key] = self.loss_clean.get(key, 0.0) + float(clean_N.sum())
            self.loss_edited[key] = self.loss_edited.get(key, 0.0) + float(edited_N.sum())
            self.kl[key] = self.kl.get(key, 0.0) + float(kl_N.sum())
            self.tokens[key] = self.tokens.get(key, 0) + int(kl_N.numel())
        if active_N is not None:
            self.kl_active += float(kl_N[active_N].sum())
            self.active += int(active_N.sum())


@dataclass
class InterventionEffect:
    """What an intervention changed in one model on held-out tokens (see the module docstring)."""

    delta_loss: dict[str, float]
    """Domain (and ``"all"``) -> mean CE(edited) − CE(clean), nats per token."""
    kl: dict[str, float]
    """Domain (and ``"all"``) -> mean KL(p_clean ‖ p_edited), nats."""
    loss: dict[str, float]
    """Domain (and ``"all"``) -> the clean mean CE over the same predictions."""
    tokens: dict[str, int]
    """Domain (and ``"all"``) -> predictions measured."""
    kl_active: float | None = None
    """Ablation: mean KL where a latent of the set is active (None: never active, or steering)."""
    active_tokens: int = 0
    """Ablation: predictions where a latent of the set is active."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "delta_loss": self.delta_loss,
            "kl": self.kl,
            "loss": self.loss,
            "tokens": self.tokens,
            "kl_active": self.kl_active,
            "active_tokens": self.active_tokens,
        }

    def __str__(self) -> str:
        domains = ", ".join(f"{d} {v:+.4g}" for d, v in self.delta_loss.items() if d != ALL)
        text = f"Δ loss {self.delta_loss[ALL]:+.4g} nats ({domains}); KL {self.kl[ALL]:.4g}"
        if self.kl_active is not None:
            text += f"; KL where active {self.kl_active:.4g} ({self.active_tokens} tokens)"
        return text


def _effect(sums: _Sums, ablation: bool) -> InterventionEffect:
    n = sums.tokens
    return InterventionEffect(
        delta_loss={d: (sums.loss_edited[d] - sums.loss_clean[d]) / max(n[d], 1) for d in n},
        kl={d: sums.kl[d] / max(n[d], 1) for d in n},
        loss={d: sums.loss_clean[d] / max(n[d], 1) for d in n},
        tokens=dict(n),
        kl_active=sums.kl_active / sums.active if ablation and sums.active else None,
        active_tokens=sums.active if ablation else 0,
    )


@dataclass
class _Prediction:
    """A model's next-token predictions at positions p0 … P−2, in float64: ``z`` the logits
    ``[N, V]``, ``lse`` their log-sum-exp ``[N]`` and ``nll`` the targets' NLL ``[N]``."""

    z: torch.Tensor
    lse: torch.Tensor
    nll: torch.Tensor

    @classmethod
    def of(cls, logits_BPV: torch.Tensor, tokens_BP: torch.Tensor, p0: int) -> _Prediction:
        z = logits_BPV[:, p0:-1].double().cpu()
        z = z.reshape(-1, z.shape[-1])
        lse = z.logsumexp(-1)
        targets = tokens_BP[:, p0 + 1 :].reshape(-1, 1).long()
        return cls(z, lse, lse - z.gather(-1, targets).squeeze(-1))


class _Reference(_Prediction):
    """The clean predictions, with what every KL against them reuses."""

    p: torch.Tensor
    """``[N, V]`` the clean next-token probabilities."""
    expected_log_p: torch.Tensor
    """``[N]`` Σ_v p_v log p_v."""

    @classmethod
    def of(cls, logits_BPV: torch.Tensor, tokens_BP: torch.Tensor, p0: int) -> _Reference:
        ref = super().of(logits_BPV, tokens_BP, p0)
        log_p = ref.z - ref.lse[:, None]
        ref.p = log_p.exp()
        ref.expected_log_p = torch.linalg.vecdot(ref.p, log_p)
        return ref

    def kl(self, other: _Prediction) -> torch.Tensor:
        """``[N]`` KL(p ‖ q) = Σ p log p − (Σ p z_q − lse_q), q = softmax(z_q): one pass over
        the edited logits."""
        kl = self.expected_log_p - (torch.linalg.vecdot(self.p, other.z) - other.lse)
        return kl.clamp_min(0.0)  # ≥ 0; equal distributions leave only rounding (~1e-16)


@torch.no_grad()
def measure_interventions(
    crosscoder: Crosscoder,
    adapters: Mapping[str, ModelAdapter],
    sites: Mapping[str, str],
    batches: Mapping[str, Sequence[torch.Tensor]],
    interventions: Mapping[str, Intervention],
    first_position: int = 1,
    alignments: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, InterventionEffect]]:
    """Name -> model -> :class:`InterventionEffect` of each of ``interventions`` in every model.

    ``batches``: domain -> ``[B, P]`` token batches in the corpus's ids (``alignments`` maps them
    to a model's own ids where a model has one). Each batch goes once through every model for the
    joint code and the clean logits, then once per intervention and model with the edit.
    """
    models = list(crosscoder.cfg.models)
    missing = [m for m in models if m not in adapters or m not in sites]
    if missing:
        raise ConfigError(f"interventions need an adapter and a site for model(s) {missing}")
    for intervention in interventions.values():
        intervention.check(crosscoder)
    alignments = alignments or {}
    p0 = first_position
    sums = {name: {m: _Sums() for m in models} for name in interventions}
    for domain, domain_batches in batches.items():
        for corpus_BP in domain_batches:
            if corpus_BP.shape[1] < p0 + 2:
                raise ConfigError(
                    f"sequences of {corpus_BP.shape[1]} tokens leave no prediction after "
                    f"position {p0}"
                )
            tokens = {m: model_tokens(corpus_BP, alignments.get(m)) for m in models}
            codes_TL = joint_codes(crosscoder, adapters, sites, tokens, p0)
            B, P = corpus_BP.shape
            active_BQL = codes_TL.reshape(B, P - p0, -1)[:, :-1] > 0  # predictions p0 … P−2
            edits = {
                name: site_edits(crosscoder, iv, codes_TL) for name, iv in interventions.items()
            }
            for m in models:
                clean = _Reference.of(adapters[m].logits(tokens[m]), tokens[m], p0)
                for name, intervention in interventions.items():
                    logits = edited_logits(adapters[m], tokens[m], sites[m], edits[name][m], p0)
                    edited = _Prediction.of(logits, tokens[m], p0)
                    kl_N = clean.kl(edited)
                    active_N = None
                    if intervention.kind == "ablate":
                        active_N = active_BQL[..., list(intervention.latents)].any(-1).reshape(-1)
                    sums[name][m].add(domain, clean.nll, edited.nll, kl_N, active_N)
    return {
        name: {m: _effect(sums[name][m], iv.kind == "ablate") for m in models}
        for name, iv in interventions.items()
    }


@torch.no_grad()
def joint_codes(
    crosscoder: Crosscoder,
    adapters: Mapping[str, ModelAdapter],
    sites: Mapping[str, str],
    tokens: Mapping[str, torch.Tensor],
    first_position: int = 1,
) -> torch.Tensor:
    """``[T, L]`` float32 the crosscoder's inference code of every token from position
    ``first_position`` on, from every model's activation at its site (``tokens``: model ->
    ``[B, P]`` in its own ids)."""
    acts = {}
    for m in crosscoder.cfg.models:
        site = adapters[m].site(sites[m]).name
        captured = adapters[m].capture(tokens[m], [site])[site][:, first_position:]
        acts[m] = captured.reshape(-1, captured.shape[-1])
    return crosscoder.encode(acts).float().cpu()


def count_firings(
    crosscoder: Crosscoder,
    adapters: Mapping[str, ModelAdapter],
    sites: Mapping[str, str],
    batches: Mapping[str, Sequence[torch.Tensor]],
    first_position: int = 1,
    alignments: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``[L]`` int64 tokens of ``batches`` (corpus ids, as for :func:`measure_interventions`) on
    which each latent is active."""
    alignments = alignments or {}
    counts = torch.zeros(crosscoder.cfg.dict_size, dtype=torch.long)
    for domain_batches in batches.values():
        for corpus_BP in domain_batches:
            tokens = {m: model_tokens(corpus_BP, alignments.get(m)) for m in crosscoder.cfg.models}
            counts += (joint_codes(crosscoder, adapters, sites, tokens, first_position) > 0).sum(0)
    return counts


def model_tokens(corpus_BP: torch.Tensor, alignment: Any) -> torch.Tensor:
    """``corpus_BP`` in a model's own ids (unchanged without an alignment)."""
    if alignment is None:
        return corpus_BP.long()
    table = torch.as_tensor(np.asarray(alignment), dtype=torch.long)
    return table[corpus_BP.long()]


def heldout_batches(
    input_ids: Any, domains: Any, max_sequences: int = 16, batch_tokens: int = 2048
) -> dict[str, list[torch.Tensor]]:
    """Domain -> ``[B, P]`` int64 batches of the first ``max_sequences`` sequences of each domain
    (``input_ids [N, P]``, ``domains [N]`` labels), about ``batch_tokens`` tokens a batch."""
    if max_sequences < 1 or batch_tokens < 1:
        raise ConfigError(
            f"max_sequences and batch_tokens must be >= 1, got {max_sequences}, {batch_tokens}"
        )
    labels = np.asarray(domains)
    ids = np.asarray(input_ids)
    per_batch = max(1, batch_tokens // int(ids.shape[1]))
    out: dict[str, list[torch.Tensor]] = {}
    for label in sorted(set(labels.tolist())):
        rows = torch.as_tensor(ids[labels == label][:max_sequences]).long()
        out[str(label)] = list(rows.split(per_batch))
    return out
