"""The claims a run tests, each judged from ``summary.json``: measured value, statistic, verdict.

Each claim states its criterion (what "holds" means here), so a reader can disagree with it.
Claims whose inputs the run did not measure are left out. Sources: the seed paper (crosscoder
feature classes), MoE Lens (routing and early decoding), the routing-similarity study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05
"""Significance level of the claims judged by a test."""


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
    """The test statistic (or the quantity compared with the criterion)."""
    holds: bool | None
    """True / False; None when the run cannot decide it."""

    def __post_init__(self) -> None:
        if self.holds is not None:  # a numpy bool from a statistic becomes a plain one
            object.__setattr__(self, "holds", bool(self.holds))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)


def run_claims(summary: dict[str, Any]) -> list[Claim]:
    """Every claim the run's summary can judge, in reading order."""
    claims = feature_claims(summary)
    moe = summary.get("moe", {})
    for model, data in moe.get("early_decoding", {}).items():
        claims += early_decoding_claims(model, data)
    for model, data in moe.get("routing", {}).items():
        claims += routing_claims(model, data)
    for model, data in moe.get("routing_similarity", {}).items():
        if model != "cross_model":
            claims += similarity_claims(model, data)
    return claims


def _arch_names(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the dense model's name, the MoE model's name) among the run's models."""
    by_arch = {data.get("arch"): name for name, data in summary.get("models", {}).items()}
    return by_arch.get("dense"), by_arch.get("moe")


def feature_claims(summary: dict[str, Any]) -> list[Claim]:
    """The seed paper's three claims on exclusive latents."""
    from scipy.stats import binomtest

    dense, moe = _arch_names(summary)
    counts = summary.get("features", {}).get("counts", {})
    if dense is None or moe is None:
        return []
    claims = []
    a, b = counts.get(f"{dense}_only", 0), counts.get(f"{moe}_only", 0)
    if not a + b:  # nothing to compare: said, not left out
        why = "not testable: no exclusive latents" if counts else "not testable: no classes"
        return [
            Claim("seed paper", text, "no exclusive latents", why, None)
            for text in (
                f"{moe} learns fewer exclusive latents than {dense} (one-sided binomial test "
                f"of the exclusive latents, p < {ALPHA})",
                f"{moe}-only latents fire more often than shared ones (two-sided Mann–Whitney "
                f"U, p < {ALPHA}, rank-biserial > 0)",
                f"{dense}-only latents fire less often than shared ones (two-sided "
                f"Mann–Whitney U, p < {ALPHA}, rank-biserial < 0)",
            )
        ]
    p = float(binomtest(b, a + b, 0.5, alternative="less").pvalue) if a + b else 1.0
    statistic, holds = f"ratio {_ratio(a, b)}, p = {p:.2g}", b < a and p < ALPHA
    dedicated = summary.get("crosscoder", {}).get("settings", {}).get("n_dedicated") or []
    if any(dedicated):  # the partition sets the exclusive counts, not the models
        statistic = f"not testable: dedicated blocks of {dedicated} latents fix the counts"
        holds = None
    claims.append(
        Claim(
            "seed paper",
            f"{moe} learns fewer exclusive latents than {dense} "
            f"(one-sided binomial test of the {a + b} exclusive latents, p < {ALPHA})",
            f"{b} {moe}-only vs {a} {dense}-only live latents",
            statistic,
            holds,
        )
    )
    tests = summary.get("density", {}).get("tests", {})
    median = summary.get("density", {}).get("median", {})
    for name, direction, word in ((moe, 1, "more"), (dense, -1, "less")):
        test = tests.get(f"{name}_only_vs_shared")
        if not test:
            continue
        effect, p = test["effect_size"], test["p_value"]
        if effect is None or p is None:
            statistic, holds = "not testable (too few latents)", None
        else:
            statistic, holds = (
                f"rank-biserial {effect:+.2f}, p = {p:.2g}",
                (p < ALPHA and effect * direction > 0),
            )
        claims.append(
            Claim(
                "seed paper",
                f"{name}-only latents fire {word} often than shared ones "
                f"(two-sided Mann–Whitney U, p < {ALPHA}, rank-biserial "
                f"{'> 0' if direction > 0 else '< 0'})",
                f"median density {_g(median.get(f'{name}_only'))} vs "
                f"{_g(median.get('shared'))} (shared)",
                statistic,
                holds,
            )
        )
    return claims


def early_decoding_claims(model: str, data: dict[str, Any]) -> list[Claim]:
    """MoE Lens: the top-1 expert approximates the mixture, and costs little perplexity."""
    claims = []
    top1 = {layer: by_n["1"] for layer, by_n in data.get("cosine", {}).items() if "1" in by_n}
    if top1:
        hidden = [v["hidden"] for v in top1.values()]
        contribution = [v["contribution"] for v in top1.values()]
        claims.append(
            Claim(
                "MoE Lens",
                f"{model}: the top-weighted expert's output approximates the full mixture "
                "(hidden-state cosine ≥ 0.9 in every MoE layer)",
                f"cos(hidden) {_span(hidden)}, cos(contribution) {_span(contribution)} "
                f"over {len(top1)} layers",
                f"min cos(hidden) = {min(hidden):.3f}",
                min(hidden) >= 0.9,
            )
        )
    increase = {d: by_n["1"] for d, by_n in data.get("perplexity_increase", {}).items()
                if "1" in by_n}  # fmt: skip
    if increase:
        worst = max(increase.values())
        claims.append(
            Claim(
                "MoE Lens",
                f"{model}: keeping only the top expert in every MoE layer costs little "
                "perplexity (increase < 10% on every domain)",
                ", ".join(f"{d} {v:+.1%}" for d, v in increase.items()),
                f"max increase {worst:+.1%}",
                worst < 0.10,
            )
        )
    return claims


def routing_claims(model: str, data: dict[str, Any]) -> list[Claim]:
    """MoE Lens: one expert takes a large share of each domain's tokens."""
    ratios = []
    for stats in data.values():
        uniform = stats["uniform_share"]
        ratios += [v["top_share"] / uniform for k, v in stats.items()
                   if isinstance(v, dict) and k != "all"]  # fmt: skip
    if not ratios:
        return []
    return [
        Claim(
            "MoE Lens",
            f"{model}: routing specialises by domain (the busiest expert of a domain takes "
            "≥ 1.5× the uniform share, in every MoE layer's median domain)",
            f"busiest expert's share / uniform share: {_span(ratios)} over "
            f"{len(data)} layers × domains",
            f"median ratio {sorted(ratios)[len(ratios) // 2]:.2f}",
            sorted(ratios)[len(ratios) // 2] >= 1.5,
        )
    ]


def similarity_claims(model: str, data: dict[str, Any]) -> list[Claim]:
    """The routing-similarity study's claims, judged on every analysed layer."""
    layers = sorted(data, key=int)
    if not layers:
        return []
    within = [data[layer]["spearman_within"] for layer in layers]
    sequence = [data[layer]["sequence_spearman"] for layer in layers]
    deepest = data[layers[-1]]
    claims = [
        Claim(
            "routing similarity",
            f"{model}: cos(router inputs) predicts the top-k overlap of two tokens "
            "(Spearman ρ > 0 in every layer)",
            f"ρ within domains {_span(within)} over layers {layers[0]}–{layers[-1]}",
            *_all_positive(within),
        ),
        Claim(
            "routing similarity",
            f"{model}: … and of two sequences' expert usage (Spearman ρ > 0 in every layer)",
            f"ρ {_span(sequence)}",
            *_all_positive(sequence),
        ),
    ]
    ratio = deepest.get("ratio")
    if ratio is not None and None not in (deepest.get("overlap_across"),
                                          deepest.get("shuffled_baseline")):  # fmt: skip
        claims.append(
            Claim(
                "routing similarity",
                f"{model}: the deepest layer routes unrelated inputs to the same experts "
                "(cross-domain overlap ≥ 1.5× a shuffled baseline)",
                f"layer {layers[-1]}: overlap {deepest['overlap_across']:.2f} vs shuffled "
                f"{deepest['shuffled_baseline']:.2f}",
                f"ratio {ratio:.2f}",
                ratio >= 1.5,
            )
        )
    own, other = deepest.get("prompt_own_continuation"), deepest.get("prompt_other_continuations")
    if own is not None and other is not None:
        claims.append(
            Claim(
                "routing similarity",
                f"{model}: a prompt's routing does not predict its continuation's (its own "
                "continuation overlaps it no more than other prompts' continuations do)",
                f"layer {layers[-1]}: own {own:.2f} vs others {other:.2f}",
                f"difference {own - other:+.2f}",
                own <= other,
            )
        )
    return claims


def _ratio(a: int, b: int) -> str:
    if not b:
        return "no exclusive latents in the MoE"
    return (
        f"{a / b:.1f}× fewer" if a >= b else f"{b / a:.1f}× as many" if a else "none in the dense"
    )


def _g(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _span(values: list[float | None]) -> str:
    defined = [v for v in values if v is not None]
    return f"{min(defined):.2f}–{max(defined):.2f}" if defined else "–"


def _all_positive(values: list[float | None]) -> tuple[str, bool | None]:
    """(statistic, verdict) of "ρ > 0 in every layer"; not testable where a ρ is undefined."""
    if None in values:
        return f"not testable: ρ undefined in {values.count(None)} layer(s) (constant input)", None
    return f"min ρ = {min(values):.2f}", min(values) > 0
