"""The claims a run tests, each judged from ``summary.json``: measured value, statistic, verdict.

Each claim states its source's criterion (what "holds" means here), so a reader can disagree
with it. Two kinds of claim:

- **tested**: a one-sided test in the claim's direction gives a p-value; the p-values of every
  tested claim of one run are Holm-adjusted together (:func:`holm`), and the verdict rests on the
  adjusted p (< :data:`ALPHA`) and on the criterion's other conditions (e.g. the sign of the
  effect). A claim "in every layer" takes the largest per-layer p (an intersection–union test).
- **judged against a criterion**: a threshold on a mean over thousands of tokens (MoE Lens's
  cosine and perplexity bounds, the specialisation share), with no p-value.

A claim whose statistic is undefined (missing, NaN, too small a sample — each claim names its
minimum — collapsed routing, identical sequences) is **not testable**: ``holds`` None and the
reason in the statistic, never an exception. Claims whose inputs the run did not measure at all
are left out. Sources: the seed paper (crosscoder feature classes), MoE Lens (routing and early
decoding), the routing-similarity study.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from crossdiff.stats import holm

ALPHA = 0.05
"""Family-wise significance level of the claims judged by a test (Holm-adjusted)."""
MIN_CLASS_LATENTS = 10
"""Live latents each class needs before a density claim is testable."""
TOP1_COSINE = 0.9
"""MoE Lens: the top-1 hidden state's cosine with the full mixture's."""
TOP1_RECOVERY = 0.75
"""Share of the gap between no routed expert and all K that the top-1 expert must close."""
PERPLEXITY_BOUND = 0.05
"""MoE Lens: keeping only the top expert costs about 5% perplexity."""
SPECIALISATION_RATIO = 1.5
"""A domain's busiest expert takes at least this multiple of its share of the other domains."""
MIN_DOMAIN_TOKENS = 100
"""Tokens per domain before the specialisation claim is testable."""
MIN_PAIRS = 100
"""Token or sequence pairs per layer before a routing-similarity ρ is testable."""
MIN_GROUPS = 5
"""Independent units (sequences, prompts) a routing-similarity test needs."""
PROMPT_MARGIN = 0.05
"""Largest usage-intersection advantage of a prompt's own continuation that counts as none."""
VERDICTS = ("holds", "does not hold", "not testable")


@dataclass(frozen=True)
class Claim:
    """One claim and what the run says about it."""

    source: str
    """Where the claim comes from (``seed paper``, ``MoE Lens``, ``routing similarity``)."""
    claim: str
    """The claim, with the criterion used here."""
    measured: str
    """The measured values it is judged on."""
    statistic: str
    """The test statistic (or the quantity compared with the criterion); for a claim that is
    not testable, ``not testable: <reason>``."""
    holds: bool | None
    """True / False; None when the run cannot decide it (not testable)."""
    p_value: float | None = None
    """Raw one-sided p of the claim's test; None for a claim judged against a criterion."""
    p_adjusted: float | None = None
    """Holm-adjusted p across the run's tested claims (set by :func:`run_claims`)."""
    n: int | None = None
    """The sample size the verdict rests on (latents, pairs, prompts, sequences)."""
    condition: bool = True
    """The criterion's part beside the test (e.g. the effect's sign): a tested claim holds when
    this is true and the adjusted p is below :data:`ALPHA`."""

    def __post_init__(self) -> None:
        if self.holds is not None:  # a numpy bool from a statistic becomes a plain one
            object.__setattr__(self, "holds", bool(self.holds))
        object.__setattr__(self, "condition", bool(self.condition))

    @property
    def verdict(self) -> str:
        """``holds``, ``does not hold`` or ``not testable``."""
        return {True: "holds", False: "does not hold", None: "not testable"}[self.holds]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON, with the verdict (the ``condition`` is folded into ``holds``)."""
        out = asdict(self)
        out.pop("condition")
        out["verdict"] = self.verdict
        return out


def tested(
    source: str,
    claim: str,
    measured: str,
    statistic: str,
    p_value: Any,
    n: int | None = None,
    condition: bool = True,
) -> Claim:
    """A claim judged by a one-sided test; not testable if ``p_value`` is undefined."""
    p = finite(p_value)
    if p is None:
        return not_testable(source, claim, measured, "the test's p-value is undefined", n)
    return Claim(source, claim, measured, statistic, condition and p < ALPHA, p, p, n, condition)


def not_testable(
    source: str, claim: str, measured: str, reason: str, n: int | None = None
) -> Claim:
    """A claim the run cannot decide, with the reason."""
    return Claim(source, claim, measured, f"not testable: {reason}", None, n=n)


def adjust(claims: list[Claim]) -> list[Claim]:
    """The claims with Holm-adjusted p-values over the tested ones and verdicts from them."""
    tested_at = [i for i, c in enumerate(claims) if c.p_value is not None and c.holds is not None]
    adjusted = holm([claims[i].p_value for i in tested_at])  # type: ignore[misc]
    out = list(claims)
    for index, p in zip(tested_at, adjusted, strict=True):
        claim = out[index]
        out[index] = replace(claim, p_adjusted=p, holds=claim.condition and p < ALPHA)
    return out


def run_claims(summary: dict[str, Any]) -> list[Claim]:
    """Every claim the run's summary can judge, in reading order, Holm-adjusted together."""
    claims = feature_claims(summary)
    moe = summary.get("moe") or {}
    for model, data in (moe.get("early_decoding") or {}).items():
        claims += early_decoding_claims(model, data or {})
    for model, data in (moe.get("routing") or {}).items():
        claims += routing_claims(model, data or {})
    for model, data in (moe.get("routing_similarity") or {}).items():
        if model != "cross_model":
            claims += similarity_claims(model, data or {})
    cross = (moe.get("routing_similarity") or {}).get("cross_model") or {}
    for pair, data in cross.items():
        claims += cross_model_claims(pair, data or {})
    return adjust(claims)


def finite(value: Any) -> float | None:
    """``value`` as a float, or None if it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- seed paper


def _arch_names(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the dense model's name, the MoE model's name) among the run's models."""
    models = summary.get("models") or {}
    by_arch = {(data or {}).get("arch"): name for name, data in models.items()}
    return by_arch.get("dense"), by_arch.get("moe")


def feature_claims(summary: dict[str, Any]) -> list[Claim]:
    """The seed paper's three claims on exclusive latents."""
    from scipy.stats import binomtest

    dense, moe = _arch_names(summary)
    counts = (summary.get("features") or {}).get("counts") or {}
    if dense is None or moe is None:
        return []
    a, b = _count(counts.get(f"{dense}_only")), _count(counts.get(f"{moe}_only"))
    text = (
        f"{moe} learns fewer exclusive latents than {dense} "
        f"(one-sided binomial test of the {a + b} exclusive latents, Holm p < {ALPHA})"
    )
    measured = f"{b} {moe}-only vs {a} {dense}-only live latents"
    dedicated = ((summary.get("crosscoder") or {}).get("settings") or {}).get("n_dedicated") or []
    if any(dedicated):  # the partition sets the exclusive counts, not the models
        claims = [
            not_testable(
                "seed paper",
                text,
                measured,
                f"dedicated blocks of {dedicated} latents fix the counts",
            )
        ]
    elif a + b == 0:
        claims = [not_testable("seed paper", text, measured, "no exclusive latents", 0)]
    else:
        p = float(binomtest(b, a + b, 0.5, alternative="less").pvalue)
        statistic = f"ratio {_ratio(a, b)}, p = {p:.2g}"
        claims = [tested("seed paper", text, measured, statistic, p, a + b, b < a)]
    density = summary.get("density") or {}
    tests, median = density.get("tests") or {}, density.get("median") or {}
    for name, direction in ((moe, 1), (dense, -1)):  # said as not testable, never left out
        test = tests.get(f"{name}_only_vs_shared") or {}
        claims.append(density_claim(name, direction, test, median))
    return claims


def density_claim(name: str, direction: int, test: dict[str, Any], median: dict) -> Claim:
    """``name``-only latents fire more (``direction`` 1) or less (−1) often than shared ones."""
    word, side = ("more", "greater") if direction > 0 else ("less", "less")
    text = (
        f"{name}-only latents fire {word} often than shared ones (one-sided Mann–Whitney U, "
        f"'{side}', Holm p < {ALPHA}; at least {MIN_CLASS_LATENTS} live latents per class)"
    )
    measured = (
        f"median density {_g(median.get(f'{name}_only'))} vs {_g(median.get('shared'))} (shared)"
    )
    sizes = test.get("n")
    if not isinstance(sizes, list | tuple) or len(sizes) != 2:
        return not_testable("seed paper", text, measured, "the class sizes were not recorded")
    n_class, n_shared = (_count(s) for s in sizes)
    measured += f"; {n_class} vs {n_shared} live latents"
    if min(n_class, n_shared) < MIN_CLASS_LATENTS:
        reason = f"{min(n_class, n_shared)} live latents in a class, fewer than {MIN_CLASS_LATENTS}"
        return not_testable("seed paper", text, measured, reason, n_class)
    effect = finite(test.get("effect_size"))
    p = finite(test.get(f"p_{side}"))
    if p is None:  # derive the one-sided p from the two-sided one and the effect's sign
        two_sided = finite(test.get("p_value"))
        if two_sided is None or effect is None:
            return not_testable("seed paper", text, measured, "the test is undefined", n_class)
        p = two_sided / 2 if effect * direction > 0 else 1 - two_sided / 2
    ratio = finite(test.get("ratio"))
    statistic = (
        f"rank-biserial {_signed(effect)}"
        + (f", density ratio {ratio:.2f}" if ratio is not None else "")
        + f", one-sided p = {p:.2g}"
    )
    agrees = effect is None or effect * direction > 0
    return tested("seed paper", text, measured, statistic, p, n_class, agrees)


# ---------------------------------------------------------------- MoE Lens


def early_decoding_claims(model: str, data: dict[str, Any]) -> list[Claim]:
    """MoE Lens: the top-1 expert approximates the mixture, and costs little perplexity."""
    claims = []
    cosine = data.get("cosine") or {}
    top1 = {layer: (by_n or {}).get("1") or {} for layer, by_n in cosine.items()}
    top1 = {layer: v for layer, v in top1.items() if v}
    if top1:
        claims.append(top1_claim(model, top1, data.get("no_routed_experts") or {}))
    increase = {d: finite((by_n or {}).get("1"))
                for d, by_n in (data.get("perplexity_increase") or {}).items()}  # fmt: skip
    if increase:
        text = (
            f"{model}: keeping only the top expert in every MoE layer costs little perplexity "
            f"(MoE Lens: ~{PERPLEXITY_BOUND:.0%}; increase ≤ {PERPLEXITY_BOUND:.0%} on every "
            "domain)"
        )
        measured = ", ".join(f"{d} {_pct(v)}" for d, v in increase.items())
        values = list(increase.values())
        if any(v is None for v in values):
            claims.append(not_testable("MoE Lens", text, measured, "an increase is undefined"))
        else:
            worst = max(v for v in values if v is not None)
            claims.append(
                Claim(
                    "MoE Lens",
                    text,
                    measured,
                    f"max increase {worst:+.1%}",
                    worst <= PERPLEXITY_BOUND,
                )
            )
    return claims


def top1_claim(model: str, top1: dict[str, dict], baseline: dict[str, dict]) -> Claim:
    """Top-1 hidden state against the full mixture AND against the no-routed-expert baseline."""
    text = (
        f"{model}: the top-weighted expert's output approximates the full mixture (MoE Lens: "
        f"hidden-state cosine ≥ {TOP1_COSINE}; here also: the top-1 hidden state closes "
        f"≥ {TOP1_RECOVERY:.0%} of the cosine gap between removing every routed expert and "
        "keeping all K, in every MoE layer)"
    )
    layers = sorted(top1, key=int)
    cos1 = {layer: finite(top1[layer].get("hidden")) for layer in layers}
    cos0 = {layer: finite((baseline.get(layer) or {}).get("hidden")) for layer in layers}
    measured = f"cos(hidden) top 1: {_span(list(cos1.values()))} over {len(layers)} layers"
    if any(v is None for v in cos1.values()):
        return not_testable("MoE Lens", text, measured, "a top-1 cosine is undefined")
    if any(v is None for v in cos0.values()):
        return not_testable(
            "MoE Lens", text, measured, "no all-routed-experts-removed baseline was measured"
        )
    measured += f"; with no routed expert: {_span(list(cos0.values()))}"
    recovered = {}
    for layer in layers:
        gap = 1 - cos0[layer]  # type: ignore[operator]
        if gap < 1e-9:
            return not_testable(
                "MoE Lens",
                text,
                measured,
                f"removing every routed expert leaves layer {layer}'s hidden state unchanged",
            )
        recovered[layer] = (cos1[layer] - cos0[layer]) / gap  # type: ignore[operator]
    kl = {
        layer: 1 - top1[layer]["lens_kl"] / baseline[layer]["lens_kl"]
        for layer in layers
        if finite(top1[layer].get("lens_kl")) is not None
        and (finite(baseline[layer].get("lens_kl")) or 0) > 0
    }
    measured += f"; gap closed {_span(list(recovered.values()))}"
    if kl:
        measured += f", logit-lens KL closed {_span(list(kl.values()))}"
    worst_cos = min(v for v in cos1.values() if v is not None)
    worst_gap = min(recovered.values())
    statistic = f"min cos(hidden) = {worst_cos:.3f}, min gap closed = {worst_gap:.2f}"
    holds = worst_cos >= TOP1_COSINE and worst_gap >= TOP1_RECOVERY
    return Claim("MoE Lens", text, measured, statistic, holds)


def routing_claims(model: str, data: dict[str, Any]) -> list[Claim]:
    """MoE Lens: routing specialises by domain (share elsewhere, experts for half)."""
    text = (
        f"{model}: routing specialises by domain (a layer × domain cell is specialised when the "
        f"domain's busiest expert takes ≥ {SPECIALISATION_RATIO}× its share of the other domains' "
        "tokens AND fewer experts than under uniform routing cover half of the domain's routing "
        f"decisions; holds if at least half of the cells are; ≥ {MIN_DOMAIN_TOKENS} tokens and "
        "≥ 2 domains)"
    )
    cells, small, missing = [], [], False
    for stats in data.values():
        if not isinstance(stats, dict):
            continue
        uniform_half = finite(stats.get("uniform_experts_for_half"))
        for domain, d in stats.items():
            if not isinstance(d, dict) or domain == "all":
                continue
            tokens = finite(d.get("tokens"))
            if tokens is not None and tokens < MIN_DOMAIN_TOKENS:
                small.append(f"{domain} ({tokens} tokens)")
            share, elsewhere = finite(d.get("top_share")), finite(d.get("top_share_elsewhere"))
            half = finite(d.get("experts_for_half"))
            if share is None or elsewhere is None or half is None or uniform_half is None:
                missing = True
                continue
            ratio = share / elsewhere if elsewhere > 0 else math.inf if share > 0 else 1.0
            cells.append((ratio, half, uniform_half))
    if not cells and not missing:
        return []
    domains = {d for stats in data.values() if isinstance(stats, dict)
               for d, v in stats.items() if isinstance(v, dict) and d != "all"}  # fmt: skip
    if len(domains) < 2:
        return [not_testable("MoE Lens", text, "–", "one domain: no share elsewhere")]
    if missing or not cells:
        return [not_testable("MoE Lens", text, "–", "share elsewhere or coverage not measured")]
    if small:
        return [
            not_testable("MoE Lens", text, "–", f"too few tokens: {', '.join(sorted(set(small)))}")
        ]
    specialised = [r >= SPECIALISATION_RATIO and h < u for r, h, u in cells]
    ratios = [r for r, _, _ in cells]
    measured = (
        f"busiest expert's share / its share elsewhere {_span(ratios)}; experts for half "
        f"{_span([h for _, h, _ in cells], '.0f')} (uniform {cells[0][2]:.0f}); "
        f"{sum(specialised)} of {len(cells)} layer × domain cells specialised"
    )
    statistic = f"{sum(specialised) / len(cells):.0%} of cells specialised"
    return [
        Claim(
            "MoE Lens", text, measured, statistic, 2 * sum(specialised) >= len(cells), n=len(cells)
        )
    ]


# ---------------------------------------------------------------- routing similarity


def similarity_claims(model: str, data: dict[str, Any]) -> list[Claim]:
    """The routing-similarity study's claims, judged on every analysed layer."""
    layers = sorted((k for k, v in data.items() if isinstance(v, dict)), key=int)
    if not layers:
        return []
    claims = [
        rho_claim(
            model,
            data,
            layers,
            "spearman_within",
            "pairs_within",
            "cos(router inputs) predicts the top-k overlap of two tokens of one domain",
        ),
        rho_claim(
            model,
            data,
            layers,
            "sequence_spearman",
            "sequence_pairs",
            "… and of two sequences' expert usage",
        ),
    ]
    deepest = data[layers[-1]]
    ratios = [finite(data[layer].get("ratio")) for layer in layers]
    if "ratio" in deepest:
        text = (
            f"{model}: the deepest layer routes unrelated inputs to the same experts "
            f"(cross-domain overlap ≥ {SPECIALISATION_RATIO}× a shuffled baseline)"
        )
        measured = "ratio by layer " + ", ".join(
            f"{layer}: {_g(r, '.2f')}" for layer, r in zip(layers, ratios, strict=True)
        )
        if ratios[-1] is None:
            claims.append(not_testable("routing similarity", text, measured, "no ratio"))
        else:
            claims.append(
                Claim(
                    "routing similarity",
                    text,
                    measured + _trend(layers, ratios),
                    f"ratio {ratios[-1]:.2f}",
                    ratios[-1] >= SPECIALISATION_RATIO,
                )
            )
    if "prompt_own_continuation" in deepest:
        claims.append(prompt_claim(model, layers[-1], deepest))
    return claims


def rho_claim(model: str, data: dict, layers: list[str], key: str, n_key: str, what: str) -> Claim:
    """ρ > 0 in every layer: one-sided p per layer (grouped jackknife), the largest taken."""
    text = (
        f"{model}: {what} (Spearman ρ > 0 in every layer: one-sided test, sequences as "
        f"independent units, Holm p < {ALPHA}; ≥ {MIN_PAIRS} pairs per layer)"
    )
    rho = [finite(data[layer].get(key)) for layer in layers]
    measured = "ρ by layer " + ", ".join(
        f"{layer}: {_g(r, '.2f')}" for layer, r in zip(layers, rho, strict=True)
    )
    undefined = [layer for layer, r in zip(layers, rho, strict=True) if r is None]
    if undefined:
        reason = (
            f"ρ undefined in layer {', '.join(undefined)} (constant overlap or cosine: collapsed "
            "routing or identical inputs)"
        )
        return not_testable("routing similarity", text, measured, reason)
    measured += _trend(layers, rho)
    sizes = [finite(data[layer].get(n_key)) for layer in layers]
    if any(s is None for s in sizes):
        return not_testable(
            "routing similarity", text, measured, "the number of pairs was not recorded"
        )
    n = min(_count(s) for s in sizes)
    if n < MIN_PAIRS:
        return not_testable("routing similarity", text, measured, f"{n} pairs < {MIN_PAIRS}", n)
    p_values = [finite(data[layer].get(f"{key}_p")) for layer in layers]
    if any(p is None for p in p_values):
        return not_testable("routing similarity", text, measured, "the test is undefined", n)
    cis = [data[layer].get(f"{key}_ci") for layer in layers]
    weakest = min(range(len(layers)), key=lambda i: rho[i])  # type: ignore[arg-type,return-value]
    ci = cis[weakest]
    statistic = f"min ρ = {rho[weakest]:.2f} (layer {layers[weakest]}"
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        statistic += f", 95% CI {ci[0]:.2f}–{ci[1]:.2f}"
    worst_p = max(p for p in p_values if p is not None)
    statistic += f"), largest one-sided p = {worst_p:.2g}"
    return tested(
        "routing similarity",
        text,
        measured,
        statistic,
        worst_p,
        n,
        all(r > 0 for r in rho if r is not None),
    )


def prompt_claim(model: str, layer: str, stats: dict[str, Any]) -> Claim:
    """The seed: a prompt's routing does not predict its continuation's (an equivalence test)."""
    from scipy.stats import t as student

    text = (
        f"{model}: a prompt's routing does not predict its continuation's (its own "
        f"continuation's usage overlaps it less than {PROMPT_MARGIN} more than other prompts' "
        f"continuations do: one-sided t-test over prompts of H0 advantage ≥ {PROMPT_MARGIN}, Holm "
        f"p < {ALPHA}; ≥ {MIN_GROUPS} distinct prompts)"
    )
    own = finite(stats.get("prompt_own_continuation"))
    other = finite(stats.get("prompt_other_continuations"))
    measured = f"layer {layer}: own {_g(own, '.2f')} vs others {_g(other, '.2f')}"
    advantages = [finite(a) for a in stats.get("prompt_advantages") or []]
    distinct = finite(stats.get("distinct_prompts"))
    distinct = None if distinct is None else int(distinct)
    if distinct is not None and distinct < MIN_GROUPS:
        reason = f"{distinct} distinct prompt(s) (identical sequences?) < {MIN_GROUPS}"
        return not_testable("routing similarity", text, measured, reason, distinct)
    values = [a for a in advantages if a is not None]
    if len(values) < MIN_GROUPS:
        reason = f"{len(values)} prompts with an advantage measured < {MIN_GROUPS}"
        return not_testable("routing similarity", text, measured, reason, len(values))
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((a - mean) ** 2 for a in values) / (len(values) - 1))
    if sd == 0:
        return not_testable(
            "routing similarity", text, measured, "every prompt has the same advantage", len(values)
        )
    t_stat = (mean - PROMPT_MARGIN) / (sd / math.sqrt(len(values)))
    p = float(student.cdf(t_stat, len(values) - 1))
    statistic = f"mean advantage {mean:+.3f} (sd {sd:.3f}), t = {t_stat:.2f}, p = {p:.2g}"
    return tested("routing similarity", text, measured, statistic, p, len(values))


def cross_model_claims(pair: str, data: dict[str, Any]) -> list[Claim]:
    """The seed: two models route the same input to matching experts more than different input."""
    a, _, b = pair.partition("|")
    same_depth = {k: v for k, v in data.items() if k.split("|")[0] == k.split("|")[-1]}
    layers = same_depth or data
    if not layers or not any("different_input_overlap" in (v or {}) for v in layers.values()):
        return []
    text = (
        f"{a} and {b}: matched experts overlap more on the same input than on different inputs "
        f"(seed: ~60% on the same input; one-sided t-test over sequences per layer pair of the "
        f"same depth, the largest p taken, Holm p < {ALPHA}; ≥ {MIN_GROUPS} sequences)"
    )
    same = [finite((v or {}).get("matched_overlap")) for v in layers.values()]
    other = [finite((v or {}).get("different_input_overlap")) for v in layers.values()]
    measured = (
        f"layers {', '.join(layers)}: same input {_span(same)} vs different input {_span(other)}"
    )
    if any(v is None for v in same + other):
        return [not_testable("routing similarity", text, measured, "an overlap is undefined")]
    n = min(_count((v or {}).get("sequences")) for v in layers.values())
    if n < MIN_GROUPS:
        return [
            not_testable("routing similarity", text, measured, f"{n} sequences < {MIN_GROUPS}", n)
        ]
    p_values = [finite((v or {}).get("same_vs_different_p")) for v in layers.values()]
    if any(p is None for p in p_values):
        reason = "the test is undefined (identical overlaps on every sequence?)"
        return [not_testable("routing similarity", text, measured, reason, n)]
    worst = max(p for p in p_values if p is not None)
    differences = [s - o for s, o in zip(same, other, strict=True)]  # type: ignore[operator]
    statistic = f"difference {_span(differences)}, largest one-sided p = {worst:.2g}"
    return [tested("routing similarity", text, measured, statistic, worst, n, min(differences) > 0)]


# ---------------------------------------------------------------- formatting


def _trend(layers: list[str], values: list[float | None]) -> str:
    """'; depth trend: Spearman ρ(layer, value) = …' over ≥ 3 defined layers, else ''."""
    from scipy.stats import spearmanr

    pairs = [(int(layer), v) for layer, v in zip(layers, values, strict=True) if v is not None]
    if len(pairs) < 3 or len({v for _, v in pairs}) < 2:
        return ""
    rho = float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
    return f"; depth trend ρ(layer, value) = {rho:+.2f}"


def _count(value: Any) -> int:
    """A count from the summary; 0 if it is missing or not a finite number."""
    number = finite(value)
    return 0 if number is None else int(number)


def _ratio(a: int, b: int) -> str:
    if not b:
        return "no exclusive latents in the MoE"
    return (
        f"{a / b:.1f}× fewer" if a >= b else f"{b / a:.1f}× as many" if a else "none in the dense"
    )


def _g(value: Any, spec: str = ".3g") -> str:
    number = finite(value)
    return "–" if number is None else format(number, spec)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _span(values: list[Any], spec: str = ".2f") -> str:
    numbers = [v for v in (finite(x) for x in values) if v is not None]
    if not numbers:
        return "–"
    return f"{min(numbers):{spec}}–{max(numbers):{spec}}"
