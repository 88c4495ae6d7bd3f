"""``early_decoding``: how much of an MoE layer the top-n of its K chosen experts carry (MoE Lens).

For MoE layer L, token t, with u_t the residual stream entering L's MoE block (after attention),
s_t the shared experts' output (0 if none), w_(1) ≥ … ≥ w_(K) the routing weights and E_(i) the
chosen experts' unweighted outputs:

- contribution c_n = Σ_{i ≤ n} w_(i)·E_(i)(x_t) (routed experts only), c_K the full one;
- block output b_n = c_n + s_t; hidden state h_n = u_t + b_n, so h_K is the model's own
  ``L.resid_post``.

For n = 1..K the forward pass restricted at layer L to its top-n experts
(:meth:`~crossdiff.adapters.ModelAdapter.forward_restricted`) gives, per token and averaged over
tokens (every quantity compares the SAME token's vectors):

- ``contribution_cosine`` cos(c_n, c_K): the routed part alone, without the shared residual u_t
  (MoE Lens added LN(u) to both vectors, which inflates the cosine);
- ``block_cosine`` cos(b_n, b_K) (shared experts included; equals the above without them);
- ``hidden_cosine`` cos(h_n, h_K), the resulting hidden states;
- ``lens_top1_agreement`` / ``lens_kl``: logit lens (final norm + unembedding) of h_n vs of h_K,
  same argmax, and KL(lens(h_K) ‖ lens(h_n)) in nats;
- ``final_top1_agreement`` / ``final_kl``: the restricted model's final logits vs the full model's.

The **no-routed-expert baseline** (``no_routed_experts``, per layer): the same comparison with
every routed expert of L removed (k = 0; shared experts kept), h_0 = u_t + s_t: ``hidden_cosine``
cos(h_0, h_K), ``block_cosine`` cos(s_t, b_K), ``lens_kl`` and ``lens_top1_agreement``. The
residual stream alone keeps cos(h_0, h_K) high (≈ 0.97 in the quickstart's MoE), so a top-1
cosine means little until set against it: the report's claim asks how much of the gap
1 − cos(h_0, h_K) the top-1 expert closes.

``perplexity``: per domain, exp of the mean next-token cross-entropy when EVERY MoE layer keeps
only its top-n (n = 1..min K). Each is computed with the kept weights as routed
(``as_routed``) and rescaled to the K weights' sum (``renormalised``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossdiff.adapters import ModelAdapter
from crossdiff.analysis import AnalysisResult, RunContext
from crossdiff.errors import ConfigError
from crossdiff.figures import new_figure, save_figure
from crossdiff_analyses._moe import (
    check_layers,
    check_n,
    domain_batches,
    model_batches,
    moe_adapters,
    run_alignments,
    run_model_paths,
)

VARIANTS = {"as_routed": False, "renormalised": True}
"""Summary key -> the ``renormalise`` flag of the restricted forward."""
LAYER_METRICS = (
    "contribution_cosine",
    "block_cosine",
    "hidden_cosine",
    "lens_top1_agreement",
    "lens_kl",
    "final_top1_agreement",
    "final_kl",
)


@dataclass(frozen=True)
class EarlyDecodingSettings:
    """Which models, layers and n, on how many held-out sequences."""

    models: tuple[str, ...] | None = None
    """Models to analyse (each must be MoE); None: every MoE model of the run."""
    layers: tuple[int, ...] | None = None
    """MoE layers for the per-layer metrics; None: all of them."""
    ns: tuple[int, ...] | None = None
    """Experts kept; None: 1..K."""
    variants: tuple[str, ...] = ("as_routed", "renormalised")
    """Weight conventions of the restricted forward (keys of :data:`VARIANTS`)."""
    max_sequences: int = 32
    """Held-out sequences per domain."""
    batch_tokens: int = 2048
    """Tokens per forward pass (whole sequences, at least one)."""


# ---------------------------------------------------------------- per-token metrics


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[T, D], [T, D] -> [T]`` float64 cosine of each row pair (0 where a vector is 0)."""
    a, b = a.double(), b.double()
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return (a * b).sum(-1) / norms.where(norms > 0, 1.0)


def kl_and_agreement(
    reference: torch.Tensor, other: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, V]`` logits -> ``([T] KL(softmax(reference) ‖ softmax(other)), [T] same argmax)``."""
    log_p = F.log_softmax(reference.double(), dim=-1)
    log_q = F.log_softmax(other.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl, (reference.argmax(-1) == other.argmax(-1)).double()


def layer_token_metrics(
    adapter: ModelAdapter,
    tokens: torch.Tensor,
    layer: int,
    ns: Sequence[int],
    renormalise: Sequence[bool] = (False,),
) -> dict[bool, dict[int, dict[str, torch.Tensor]]]:
    """renormalise -> n -> metric -> ``[T]`` per-token values for ``layer``, ``tokens [B, P]``."""
    opened = adapter.expert_outputs(tokens, layer)
    shared = 0 if opened.shared_output is None else opened.shared_output  # [T, D]
    block_full = opened.block_output  # [T, D]
    hidden_full = adapter.capture(tokens, [f"{layer}.resid_post"])[f"{layer}.resid_post"]
    hidden_full = hidden_full.reshape(block_full.shape)  # [T, D]
    u = hidden_full - block_full  # [T, D] residual entering the MoE block
    lens_full = adapter.unembed(hidden_full)  # [T, V]
    final_full = adapter.logits(tokens).reshape(len(u), -1)  # [T, V]
    out: dict[bool, dict[int, dict[str, torch.Tensor]]] = {}
    for flag in renormalise:
        out[flag] = {}
        for n in ns:
            restricted = adapter.forward_restricted(tokens, layer, keep_top_n=n, renormalise=flag)
            block_n = restricted.block_outputs[layer].reshape(block_full.shape)  # [T, D]
            hidden_n = u + block_n
            lens_kl, lens_top1 = kl_and_agreement(lens_full, adapter.unembed(hidden_n))
            final_n = restricted.logits.reshape(len(u), -1)  # [T, V]
            final_kl, final_top1 = kl_and_agreement(final_full, final_n)
            out[flag][n] = {
                "contribution_cosine": cosine(block_n - shared, block_full - shared),
                "block_cosine": cosine(block_n, block_full),
                "hidden_cosine": cosine(hidden_n, hidden_full),
                "lens_top1_agreement": lens_top1,
                "lens_kl": lens_kl,
                "final_top1_agreement": final_top1,
                "final_kl": final_kl,
            }
    return out


BASELINE_METRICS = ("hidden_cosine", "block_cosine", "lens_kl", "lens_top1_agreement")


def no_expert_token_metrics(
    adapter: ModelAdapter, tokens: torch.Tensor, layer: int
) -> dict[str, torch.Tensor]:
    """Metric -> ``[T]`` per-token values with every routed expert of ``layer`` removed (k = 0,
    shared experts kept) against the model's own hidden state (:data:`BASELINE_METRICS`)."""
    opened = adapter.expert_outputs(tokens, layer)
    shared = torch.zeros_like(opened.block_output)
    if opened.shared_output is not None:
        shared = opened.shared_output.to(opened.block_output.dtype)
    hidden_full = adapter.capture(tokens, [f"{layer}.resid_post"])[f"{layer}.resid_post"]
    hidden_full = hidden_full.reshape(opened.block_output.shape)  # [T, D]
    hidden_none = hidden_full - opened.block_output + shared  # u + s
    lens_kl, lens_top1 = kl_and_agreement(
        adapter.unembed(hidden_full), adapter.unembed(hidden_none)
    )
    return {
        "hidden_cosine": cosine(hidden_none, hidden_full),
        "block_cosine": cosine(shared, opened.block_output),
        "lens_kl": lens_kl,
        "lens_top1_agreement": lens_top1,
    }


def no_expert_metrics(
    adapter: ModelAdapter, batches: Sequence[torch.Tensor], layer: int
) -> dict[str, float]:
    """Metric -> mean over every token of ``batches`` of :func:`no_expert_token_metrics`."""
    sums, count = dict.fromkeys(BASELINE_METRICS, 0.0), 0
    for tokens in batches:
        for key, values in no_expert_token_metrics(adapter, tokens, layer).items():
            sums[key] += float(values.sum())
        count += tokens.numel()
    return {key: value / max(count, 1) for key, value in sums.items()}


def layer_metrics(
    adapter: ModelAdapter,
    batches: Sequence[torch.Tensor],
    layer: int,
    ns: Sequence[int],
    renormalise: bool | Sequence[bool] = False,
) -> Any:
    """str(n) -> metric -> mean over every token of ``batches``; with several ``renormalise``
    flags, a dict flag -> that."""
    flags = [renormalise] if isinstance(renormalise, bool) else list(renormalise)
    sums = {f: {n: dict.fromkeys(LAYER_METRICS, 0.0) for n in ns} for f in flags}
    count = 0
    for tokens in batches:
        for flag, per_n in layer_token_metrics(adapter, tokens, layer, ns, flags).items():
            for n, metrics in per_n.items():
                for key, values in metrics.items():
                    sums[flag][n][key] += float(values.sum())
        count += tokens.numel()
    means = {
        f: {str(n): {k: v / max(count, 1) for k, v in sums[f][n].items()} for n in ns}
        for f in flags
    }
    return means[renormalise] if isinstance(renormalise, bool) else means


def next_token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, int]:
    """``logits [B, P, V]``, ``tokens [B, P]`` -> (summed next-token NLL in nats, predictions)."""
    log_probs = F.log_softmax(logits[:, :-1].double(), dim=-1)  # [B, P-1, V]
    nll = -log_probs.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    return float(nll.sum()), nll.numel()


def restricted_perplexity(
    adapter: ModelAdapter, batches: Sequence[torch.Tensor], n: int, renormalise: bool
) -> float:
    """exp(mean next-token NLL) with every MoE layer keeping only its top-``n`` experts."""
    total, count = 0.0, 0
    for tokens in batches:
        logits = adapter.forward_restricted(tokens, None, keep_top_n=n, renormalise=renormalise)
        nll, predictions = next_token_nll(logits.logits, tokens)
        total, count = total + nll, count + predictions
    return math.exp(total / max(count, 1))


def model_early_decoding(
    name: str,
    adapter: ModelAdapter,
    batches: dict[str, list[torch.Tensor]],
    settings: EarlyDecodingSettings | None = None,
) -> dict[str, Any]:
    """The early-decoding summary of one MoE model (see the module docstring)."""
    settings = settings or EarlyDecodingSettings()
    layers = check_layers(name, adapter, settings.layers)
    unknown = [v for v in settings.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    max_k = min(adapter.top_k(layer) for layer in adapter.moe_layers())
    ns = list(settings.ns) if settings.ns is not None else None
    check_n(name, adapter, layers, ns or [])
    every = [t for domain in batches.values() for t in domain]
    per_layer: dict[str, Any] = {}
    for layer in layers:
        layer_ns = ns or list(range(1, adapter.top_k(layer) + 1))
        flags = [VARIANTS[v] for v in settings.variants]
        means = layer_metrics(adapter, every, layer, layer_ns, flags)
        per_layer[str(layer)] = {
            "top_k": adapter.top_k(layer),
            "no_routed_experts": no_expert_metrics(adapter, every, layer),
        }
        for variant in settings.variants:
            per_layer[str(layer)][variant] = means[VARIANTS[variant]]
    perplexity: dict[str, Any] = {}
    increase: dict[str, Any] = {}
    for variant in settings.variants:
        perplexity[variant], increase[variant] = {}, {}
        for domain, domain_batches_ in batches.items():
            values = {
                n: restricted_perplexity(adapter, domain_batches_, n, VARIANTS[variant])
                for n in range(1, max_k + 1)
            }
            perplexity[variant][domain] = {str(n): v for n, v in values.items()}
            increase[variant][domain] = {str(n): v / values[max_k] - 1 for n, v in values.items()}
    return {
        "tokens": {d: sum(t.numel() for t in b) for d, b in batches.items()},
        "layers": per_layer,
        "perplexity": perplexity,
        "perplexity_increase": increase,
    }


class EarlyDecoding:
    """Top-n vs full experts per MoE layer: cosines, logit lens, and perplexity per domain."""

    def __init__(self, settings: EarlyDecodingSettings | None = None) -> None:
        self.settings = settings or EarlyDecodingSettings()

    def run(self, context: RunContext) -> AnalysisResult:
        """Run held-out tokens of each domain through every MoE model, restricted and not."""
        settings = self.settings
        adapters = moe_adapters(run_model_paths(context), settings.models)
        batches = domain_batches(context, settings.max_sequences, settings.batch_tokens)
        alignments = run_alignments(context)
        models = {
            name: model_early_decoding(
                name, adapter, model_batches(batches, alignments.get(name)), settings
            )
            for name, adapter in adapters.items()
        }
        figures = {}
        for name, summary in models.items():
            figures[f"cosine_vs_n_{name}"] = _cosine_figure(name, summary)
            figures[f"perplexity_vs_n_{name}"] = _perplexity_figure(name, summary)
        settings_json = {
            k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()
        }
        return AnalysisResult({"settings": settings_json, "models": models}, figures)


def _cosine_figure(name: str, summary: dict[str, Any]):
    """Contribution and hidden-state cosine against n, one line per layer."""

    def draw(path: Path) -> None:
        figure = new_figure(7, 3)
        axes = figure.subplots(1, 2)
        for layer, stats in summary["layers"].items():
            variant = stats.get("as_routed") or next(
                v for k, v in stats.items() if k not in ("top_k", "no_routed_experts")
            )
            ns = [int(n) for n in variant]
            baseline = stats.get("no_routed_experts") or {}
            for ax, key in zip(axes, ("contribution_cosine", "hidden_cosine"), strict=True):
                xs, ys = ns, [variant[str(n)][key] for n in ns]
                if key == "hidden_cosine" and "hidden_cosine" in baseline:  # n = 0: no expert
                    xs, ys = [0, *xs], [baseline["hidden_cosine"], *ys]
                ax.plot(xs, ys, marker="o", label=f"layer {layer}")
        titles = ("cos(top-n, all K contributions)", "cos(hidden states), n = 0: no routed expert")
        for ax, title in zip(axes, titles, strict=True):
            ax.set_xlabel("experts kept n")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.legend(fontsize=7)
        save_figure(figure, path)

    return draw


def _perplexity_figure(name: str, summary: dict[str, Any]):
    """Perplexity against n per domain, every MoE layer restricted."""

    def draw(path: Path) -> None:
        figure = new_figure(5, 3)
        ax = figure.subplots()
        for variant, per_domain in summary["perplexity"].items():
            style = "-" if variant == "as_routed" else "--"
            for domain, values in per_domain.items():
                ns = np.array([int(n) for n in values])
                ax.plot(ns, list(values.values()), style, marker="o", label=f"{domain} ({variant})")
        ax.set_xlabel("experts kept n in every MoE layer")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{name}: perplexity vs experts kept", fontsize=9)
        ax.legend(fontsize=7)
        save_figure(figure, path)

    return draw
