"""The latent explorer's data: one row per live latent, one card per live latent, as JS files.

One pass of the crosscoder's inference encoder over the held-out store tallies, per latent,
firing counts (overall and per domain), a histogram of its non-zero activations, its strongest
activations, the latent-scaling sums (β, see ``feature_classes``) and, for each MoE model, the
experts chosen at the crosscoded layer on the tokens where it fires. A second pass reads the
activations on the context windows around each latent's top activations. The logit effects of a
latent in a model are its decoder direction for that model pushed through the model's own path
to the unembedding (``adapter.unembed``: final norm, unembedding), minus the same for a zero
vector: the direct effect on the logits of adding the direction to the residual stream at the
site, later blocks left out. Shapes: ``B`` rows, ``L`` latents, ``N`` top activations, ``W``
window positions, ``E`` experts, ``K`` experts chosen per token, ``V`` vocabulary.

The files are plain scripts that assign to a global (``crossdiffLatents``, ``crossdiffCards``),
so the report opens from disk: browsers refuse ``fetch`` of ``file://`` URLs but run scripts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossdiff.crosscoder import Crosscoder
from crossdiff.crosscoder.classes import LatentScalingSums, latent_classes, latent_decoder_norms
from crossdiff.latents import iter_store_batches
from crossdiff.progress import progress_bar
from crossdiff.stages import atomic_write_text
from crossdiff.store import StoreInfo

HIST_EDGES = [10 ** (x / 6) for x in range(-18, 13)]
"""Activation histogram bin edges (log-spaced, 10⁻³ … 10², six bins a decade); values outside
the range count in the first or last bin."""


@dataclass(frozen=True)
class ExplorerSettings:
    """How much each latent's card shows."""

    contexts: int = 8
    """Top-activating held-out contexts per latent."""
    window: int = 12
    """Tokens shown before the activating token."""
    after: int = 3
    """Tokens shown after it."""
    logit_tokens: int = 10
    """Promoted and suppressed tokens listed per model."""
    chunk: int = 128
    """Latents per card file (a card file loads when one of its latents is opened)."""
    min_fires: int = 20
    """Fewest firings for an expert to own a latent (as ``expert_alignment``)."""
    specificity: float = 0.9
    """Least P(expert in top-k | latent fires) of an owning expert."""
    min_lift: float = 1.5
    """Least lift P(e | latent) / P(e) of an owning expert."""

    def __post_init__(self) -> None:
        from crossdiff.errors import ConfigError

        for name in ("contexts", "logit_tokens", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ExpertView:
    """How one MoE model routes the store's tokens at the crosscoded layer."""

    layer: int
    n_experts: int
    chosen: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """``(sequences [B], positions [B]) -> [B, K]`` experts chosen for those store rows."""


@dataclass
class Tallies:
    """What the first pass saw."""

    tokens: int = 0
    fires_L: torch.Tensor | None = None
    domain_tokens: dict[str, int] = field(default_factory=dict)
    domain_fires: dict[str, torch.Tensor] = field(default_factory=dict)
    hist_LH: torch.Tensor | None = None
    top_values_NL: torch.Tensor | None = None
    top_rows_NL: torch.Tensor | None = None
    scaling: LatentScalingSums | None = None
    """Latent scaling's running sums (β, ν)."""
    expert_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    """Model -> ``[E]`` tokens whose top-k holds each expert."""
    joint: dict[str, torch.Tensor] = field(default_factory=dict)
    """Model -> ``[L, E]`` tokens where the latent fired and the expert was chosen."""
    row_meta: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def tally_latents(
    crosscoder: Crosscoder,
    store: StoreInfo,
    top_n: int,
    experts: dict[str, ExpertView] | None = None,
    batch_size: int = 4096,
) -> Tallies:
    """The first pass over ``store`` (see the module docstring)."""
    experts = experts or {}
    n_latents = crosscoder.cfg.dict_size
    edges = torch.tensor(HIST_EDGES[1:-1])
    t = Tallies(
        fires_L=torch.zeros(n_latents, dtype=torch.long),
        domain_tokens=dict.fromkeys(store.domains, 0),
        domain_fires={d: torch.zeros(n_latents, dtype=torch.long) for d in store.domains},
        hist_LH=torch.zeros(n_latents, len(HIST_EDGES) - 1, dtype=torch.long),
        top_values_NL=torch.zeros(top_n, n_latents),
        top_rows_NL=torch.full((top_n, n_latents), -1, dtype=torch.long),
        scaling=LatentScalingSums(crosscoder),
    )
    meta_parts: dict[str, list[torch.Tensor]] = {}
    batches = iter_store_batches(crosscoder, store, batch_size)
    for acts, meta in progress_bar(batches, desc="explorer: latents", unit=" batches"):
        f_BL = crosscoder.encode(acts)
        recon = crosscoder.decode(f_BL)
        f_BL = f_BL.to("cpu", torch.float64)
        active_BL = f_BL > 0
        t.fires_L += active_BL.sum(0)
        for index, domain in enumerate(store.domains):
            mask_B = meta["domains"].long() == index
            t.domain_tokens[domain] += int(mask_B.sum())
            t.domain_fires[domain] += active_BL[mask_B].sum(0)
        rows_B, cols_B = active_BL.nonzero(as_tuple=True)
        bins_B = torch.bucketize(f_BL[rows_B, cols_B].float(), edges)
        t.hist_LH.view(-1).index_add_(
            0, cols_B * t.hist_LH.shape[1] + bins_B, torch.ones_like(bins_B)
        )
        global_B = torch.arange(t.tokens, t.tokens + len(f_BL))
        values = torch.cat([t.top_values_NL, f_BL.float()])
        rows = torch.cat([t.top_rows_NL, global_B[:, None].expand(len(f_BL), n_latents)])
        t.top_values_NL, order = values.topk(top_n, dim=0)
        t.top_rows_NL = rows.gather(0, order)
        t.scaling.add(acts, recon, f_BL)
        for model, view in experts.items():
            member_BE = torch.zeros(len(f_BL), view.n_experts, dtype=torch.float64)
            chosen_BK = view.chosen(meta["sequences"], meta["positions"]).long()
            member_BE.scatter_(1, chosen_BK, 1.0)
            t.expert_tokens[model] = t.expert_tokens.get(model, 0) + member_BE.sum(0)
            t.joint[model] = t.joint.get(model, 0) + active_BL.double().T @ member_BE
        for name, values_B in meta.items():
            meta_parts.setdefault(name, []).append(values_B)
        t.tokens += len(f_BL)
    t.top_rows_NL[t.top_values_NL <= 0] = -1
    t.row_meta = {name: torch.cat(parts) for name, parts in meta_parts.items()}
    return t


def logit_directions(crosscoder: Crosscoder) -> list[torch.Tensor]:
    """Each model's ``[L, D_m]`` decoder rows at its deepest crosscoded site (its only one for a
    single-site crosscoder), float64 on the CPU (normalised space): what the logit effects read."""
    W_dec_LC = crosscoder.decoder_weights().detach().double().cpu()
    blocks = torch.split(W_dec_LC, [width for *_, width in crosscoder.cfg.inputs], dim=1)
    last: dict[int, torch.Tensor] = {}
    for (_, owner, _, _), block in zip(crosscoder.cfg.inputs, blocks, strict=True):
        last[owner] = block  # model-major order: the last block of a model is its deepest site
    return [last[m] for m in range(len(crosscoder.cfg.models))]


@torch.no_grad()
def logit_effects(unembed: Callable[[torch.Tensor], torch.Tensor], directions_LD: torch.Tensor):
    """``[L, V]`` direct logit effect of each direction: ``unembed(d) − unembed(0)``.

    ``unembed`` maps residual vectors ``[..., D]`` to logits (a model's final norm and
    unembedding, e.g. ``ModelAdapter.unembed``). The final norm rescales its input, so the effect
    does not depend on the direction's length: it ranks the tokens the direction promotes.
    """
    zero = unembed(torch.zeros_like(directions_LD[:1]))
    return unembed(directions_LD) - zero


def top_logits(effects_LV: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([L, n] promoted token ids, [L, n] suppressed token ids)``, strongest first."""
    n = min(n, effects_LV.shape[1])
    promoted = effects_LV.topk(n, dim=1).indices
    suppressed = (-effects_LV).topk(n, dim=1).indices
    return promoted, suppressed


@torch.no_grad()
def window_values(
    crosscoder: Crosscoder,
    store: StoreInfo,
    rows_LNW: torch.Tensor,
    latents: list[int],
    batch_size: int = 4096,
) -> torch.Tensor:
    """``[L, N, W]`` the activation of ``latents[l]`` at the store rows ``rows_LNW[l]`` (0
    where a row is -1)."""
    values = torch.zeros(rows_LNW.shape)
    ids = torch.tensor(latents, dtype=torch.long)
    latent_LNW = ids[:, None, None].expand_as(rows_LNW)
    offset = 0
    batches = iter_store_batches(crosscoder, store, batch_size)
    for acts, _ in progress_bar(batches, desc="explorer: contexts", unit=" batches"):
        n_rows = len(next(iter(acts.values())))
        inside = (rows_LNW >= offset) & (rows_LNW < offset + n_rows)
        if inside.any():
            f_BL = crosscoder.encode(acts).to("cpu", torch.float32)
            values[inside] = f_BL[rows_LNW[inside] - offset, latent_LNW[inside]]
        offset += n_rows
    return values


def context_rows(
    tallies: Tallies, latents: list[int], settings: ExplorerSettings, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each latent's top activations: ``([n, N, W] store rows (-1: not harvested),
    [n, N] sequence, [n, N, W] position (-1: past the sequence))``."""
    meta = tallies.row_meta
    lookup = {
        (int(s), int(p)): r
        for r, (s, p) in enumerate(zip(meta["sequences"], meta["positions"], strict=True))
    }
    width = settings.window + settings.after + 1
    n_top = tallies.top_rows_NL.shape[0]
    rows = torch.full((len(latents), n_top, width), -1, dtype=torch.long)
    positions = torch.full((len(latents), n_top, width), -1, dtype=torch.long)
    sequences = torch.full((len(latents), n_top), -1, dtype=torch.long)
    for i, latent in enumerate(latents):
        for n, row in enumerate(tallies.top_rows_NL[:, latent].tolist()):
            if row < 0:
                continue
            sequence, position = int(meta["sequences"][row]), int(meta["positions"][row])
            sequences[i, n] = sequence
            start = max(0, position - settings.window)
            for w, p in enumerate(range(start, min(position + settings.after + 1, length))):
                positions[i, n, w] = p
                rows[i, n, w] = lookup.get((sequence, p), -1)
    return rows, sequences, positions


def _number(value: float, digits: int = 4) -> float | None:
    """A float rounded to ``digits`` significant digits; None for NaN or infinity."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


@dataclass
class ExplorerInputs:
    """Everything the explorer reads besides the store and the crosscoder."""

    decode_token: Callable[[int], str]
    """Corpus token id -> its text."""
    input_ids: Any
    """``[S, P]`` the corpus split the store was harvested from (corpus ids)."""
    unembeds: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    """Model -> residual vectors to logits (models whose site width is the residual width)."""
    model_tokens: dict[str, Callable[[int], str]] = field(default_factory=dict)
    """Model -> its own token id -> text (logit effects are in the model's vocabulary)."""
    experts: dict[str, ExpertView] = field(default_factory=dict)
    interventions: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Latent -> its measured intervention effects (the ``interventions`` analysis), if any."""


@dataclass
class LatentStats:
    """The first pass and what follows from it, for every latent: what a table row reads."""

    tallies: Tallies
    classes: list[str]
    """Class of every latent (``latent_classes``)."""
    norms_LM: torch.Tensor
    """``[L, M]`` decoder norms in the normalised space."""
    ratio_L: torch.Tensor
    """``[L]`` relative decoder norm of the first two models."""
    nu_L: torch.Tensor
    """``[L]`` latent scaling's ratio ν."""
    density_L: torch.Tensor
    domain_density: dict[str, torch.Tensor]
    owners: dict[int, dict[str, Any]]
    """Latent -> its owning expert and lift (specific latents only)."""
    domains: list[str]

    @property
    def live(self) -> list[int]:
        """Latents that fired on the store."""
        return [int(i) for i in (self.tallies.fires_L > 0).nonzero().flatten()]


def latent_stats(
    crosscoder: Crosscoder, store: StoreInfo, inputs: ExplorerInputs, settings: ExplorerSettings
) -> LatentStats:
    """One pass over ``store`` (:func:`tally_latents`) and every latent's table statistics."""
    tallies = tally_latents(crosscoder, store, settings.contexts, inputs.experts)
    norms_LM = latent_decoder_norms(crosscoder)
    domains = list(store.domains)
    return LatentStats(
        tallies=tallies,
        classes=latent_classes(crosscoder),
        norms_LM=norms_LM,
        ratio_L=norms_LM[:, 1] / (norms_LM[:, 0] + norms_LM[:, 1]).clamp_min(1e-30),
        nu_L=tallies.scaling.scaled_ratio(),
        density_L=tallies.fires_L.double() / max(tallies.tokens, 1),
        domain_density={
            d: tallies.domain_fires[d].double() / max(tallies.domain_tokens[d], 1) for d in domains
        },
        owners=_owners(tallies, settings),
        domains=domains,
    )


def explorer_columns(domains: list[str]) -> list[str]:
    """The explorer table's columns."""
    columns = ["latent", "class", "relative_norm", "scaled_ratio", "density"]
    columns += [f"density_{d}" for d in domains]
    return [*columns, "max_activation", "top_tokens", "expert", "lift"]


def latent_entries(
    crosscoder: Crosscoder,
    store: StoreInfo,
    inputs: ExplorerInputs,
    stats: LatentStats,
    latents: list[int],
    settings: ExplorerSettings,
) -> tuple[list[list[Any]], dict[int, dict[str, Any]]]:
    """``(table rows, cards)`` of ``latents``: one more pass over ``store`` reads the activations
    on their top contexts' windows."""
    tallies, domains = stats.tallies, stats.domains
    length = int(inputs.input_ids.shape[1])
    rows, sequences, positions = context_rows(tallies, latents, settings, length)
    values = window_values(crosscoder, store, rows, latents)
    effects = _logit_lists(crosscoder, latents, inputs, settings)
    table, cards = [], {}
    for i, latent in enumerate(latents):
        contexts, peaks = [], []
        for n in range(sequences.shape[1]):
            sequence = int(sequences[i, n])
            if sequence < 0:
                continue
            kept = positions[i, n] >= 0
            ids = inputs.input_ids[sequence, positions[i, n][kept].numpy()].tolist()
            tokens = [inputs.decode_token(int(t)) for t in ids]
            acts = [_number(float(v), 3) or 0.0 for v in values[i, n][kept]]
            peak = int(torch.tensor(acts).argmax())
            peaks.append(tokens[peak])
            contexts.append({"tokens": tokens, "values": acts, "peak": peak,
                             "sequence": sequence})  # fmt: skip
        top_tokens = list(dict.fromkeys(peaks))[:3]
        owner = stats.owners.get(latent)
        table.append(
            [
                latent,
                stats.classes[latent],
                _number(float(stats.ratio_L[latent])),
                _number(float(stats.nu_L[latent])),
                _number(float(stats.density_L[latent])),
                *(_number(float(stats.domain_density[d][latent])) for d in domains),
                _number(float(tallies.top_values_NL[0, latent])),
                top_tokens,
                owner["label"] if owner else None,
                owner["lift"] if owner else None,
            ]
        )
        cards[latent] = {
            "latent": latent,
            "contexts": contexts,
            "histogram": tallies.hist_LH[latent].tolist(),
            "domain_density": {d: _number(float(stats.domain_density[d][latent])) for d in domains},
            "logits": {m: effects[m][i] for m in effects},
            "experts": _expert_card(tallies, latent),
        }
        if latent in inputs.interventions:
            cards[latent]["intervention"] = inputs.interventions[latent]
    return table, cards


def build_explorer(
    crosscoder: Crosscoder,
    store: StoreInfo,
    inputs: ExplorerInputs,
    settings: ExplorerSettings | None = None,
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """``(index, cards)``: the table of every live latent and each live latent's card."""
    settings = settings or ExplorerSettings()
    stats = latent_stats(crosscoder, store, inputs, settings)
    live = stats.live
    table, cards = latent_entries(crosscoder, store, inputs, stats, live, settings)
    index = {
        "columns": explorer_columns(stats.domains),
        "rows": table,
        "models": list(crosscoder.cfg.models),
        "domains": stats.domains,
        "histogram_edges": [_number(e, 3) for e in HIST_EDGES],
        "chunk": settings.chunk,
        "tokens": stats.tallies.tokens,
        "n_latents": crosscoder.cfg.dict_size,
        "classes": sorted(set(stats.classes[i] for i in live)),
        "expert_models": {m: v.layer for m, v in inputs.experts.items()},
        "settings": vars(settings),
    }
    return index, cards


def _owners(tallies: Tallies, settings: ExplorerSettings) -> dict[int, dict[str, Any]]:
    """Latent -> its owning expert (``model:e``) and that expert's lift, for specific latents."""
    out: dict[int, dict[str, Any]] = {}
    for model, joint_LE in tallies.joint.items():
        fires_L = tallies.fires_L.double()
        conditional = joint_LE / fires_L[:, None].clamp_min(1)
        base_E = tallies.expert_tokens[model] / max(tallies.tokens, 1)
        lift = conditional / base_E.clamp_min(1e-30)
        ok = (conditional >= settings.specificity) & (lift >= settings.min_lift)
        ok &= (fires_L >= settings.min_fires)[:, None]
        best = torch.where(ok, lift, torch.full_like(lift, -torch.inf)).argmax(1)
        for latent in ok.any(1).nonzero().flatten().tolist():
            if latent in out:
                continue
            e = int(best[latent])
            out[latent] = {"label": f"{model}:{e}", "lift": _number(float(lift[latent, e]), 3)}
    return out


def _expert_card(tallies: Tallies, latent: int) -> dict[str, Any]:
    """Model -> P(expert chosen | latent fires), lift and base rate per expert."""
    out = {}
    fires = float(tallies.fires_L[latent])
    for model, joint_LE in tallies.joint.items():
        base_E = tallies.expert_tokens[model] / max(tallies.tokens, 1)
        conditional = joint_LE[latent] / max(fires, 1.0)
        out[model] = {
            "conditional": [_number(float(v), 3) for v in conditional],
            "lift": [_number(float(v), 3) for v in conditional / base_E.clamp_min(1e-30)],
            "base": [_number(float(v), 3) for v in base_E],
        }
    return out


def _logit_lists(
    crosscoder: Crosscoder, live: list[int], inputs: ExplorerInputs, settings: ExplorerSettings
) -> dict[str, list[dict[str, list]]]:
    """Model -> per live latent ``{"promoted": [[token, effect]], "suppressed": [...]}``."""
    out: dict[str, list[dict[str, list]]] = {}
    parts = logit_directions(crosscoder)
    index = torch.tensor(live, dtype=torch.long)
    for m, model in enumerate(crosscoder.cfg.models):
        unembed = inputs.unembeds.get(model)
        if unembed is None:
            continue
        decode = inputs.model_tokens.get(model, inputs.decode_token)
        lists = []
        for chunk in index.split(512):
            effects = logit_effects(unembed, parts[m][chunk]).double().cpu()
            promoted, suppressed = top_logits(effects, settings.logit_tokens)
            for j in range(len(chunk)):
                lists.append(
                    {
                        kind: [[decode(int(t)), _number(float(effects[j, t]), 3)] for t in ids[j]]
                        for kind, ids in (("promoted", promoted), ("suppressed", suppressed))
                    }
                )
        out[model] = lists
    return out


# ---------------------------------------------------------------- files


def write_explorer(
    directory: str | Path, index: dict[str, Any], cards: dict[int, dict[str, Any]]
) -> list[Path]:
    """Write ``index.js`` and ``cards-<n>.js`` (latents n·chunk … (n+1)·chunk − 1) under
    ``directory``; return the paths."""
    directory = Path(directory)
    paths = [directory / "index.js"]
    atomic_write_text(paths[0], _script("window.crossdiffLatents = ", index))
    chunks: dict[int, dict[str, Any]] = {}
    for latent, card in cards.items():
        chunks.setdefault(latent // index["chunk"], {})[str(latent)] = card
    for number, chunk in sorted(chunks.items()):
        path = directory / f"cards-{number}.js"
        text = _script(
            f"(window.crossdiffCards = window.crossdiffCards || {{}})[{number}] = ", chunk
        )
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def _script(prefix: str, data: Any) -> str:
    return prefix + json.dumps(data, separators=(",", ":"), allow_nan=False) + ";\n"
