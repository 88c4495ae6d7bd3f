"""Verdicts on the seed study's toy-model claims, judged from a toy run's sweep records.

A toy run config lists the claims it tests (``claims = [...]``, names from :data:`CLAIMS`). Each
claim states its criterion, finds the sweeps it needs by their ``figure`` and model settings,
and comes out ``holds``, ``does not hold`` or ``not testable`` (too few models, a missing
sweep, an undefined statistic) — never an exception. Claims with a direction use one-sided
tests; the p-values of the claims judged in one run are Holm-corrected together. A claim stated
as "no difference" is judged against an equivalence margin instead (no p-value).

This is the toy's own small verdict type; ``crossdiff.report.claims`` judges the real runs.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from crossdiff.stats import holm

Record = dict[str, Any]

ALPHA = 0.05
"""Significance level, applied to Holm-adjusted p-values."""
HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable"

JUMP = 0.5
"""A density row has a discontinuous phase change when ‖W_2‖² changes by ≥ this between two
neighbouring relative importances (a switch from ignored to dedicated changes it by ~1)."""
MIN_PHASE_PAIRS = 6
"""(density row, seed) pairs with a dense phase change needed to judge claim (a)."""
MIN_SPEARMAN_MODELS = 10
"""MoE models with a defined specialisation needed to judge claim (c)."""
EQUIVALENCE_MARGIN = 0.1
"""Claim (b): models with the same k/E but different E differ by at most this specialisation."""
MIN_SEEDS = 2
"""Seeds per (E, k) needed for a mean to enter claim (b)."""
MIN_INIT_MODELS = 4
"""Models per initialisation (aligned, random) needed to judge claim (d)."""
EXACT_PERMUTATIONS = 20_000
"""Mann–Whitney p-values are exact (all relabellings, ties included) up to this many."""
USED_EXPERT = 0.05
"""An expert is used when its routing share (usage) is at least this."""


@dataclass(frozen=True)
class ToyVerdict:
    """One toy claim and what a run says about it."""

    claim: str
    """The claim's name in :data:`CLAIMS`."""
    statement: str
    """The claim as its source states it."""
    criterion: str
    """What "holds" means here."""
    measured: str
    """The measured values it is judged on."""
    statistic: str
    """The test statistic or the quantity compared with the criterion."""
    n: int
    """The sample size the statistic is computed on."""
    p_value: float | None = None
    """One-sided p-value (None for margin claims and untestable ones)."""
    p_adjusted: float | None = None
    """Holm-adjusted over the claims with a p-value in this run."""
    verdict: str = UNTESTABLE
    """``holds``, ``does not hold`` or ``not testable``."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    """What a claim's judge function measured, before Holm and the verdict."""

    measured: str
    statistic: str
    n: int
    criterion_met: bool | None
    """Effect in the claimed direction and size; None: not testable."""
    p_value: float | None = None


Judge = Callable[[dict[str, list[Record]], dict[str, str]], Judgement]


def untestable(why: str, n: int = 0) -> Judgement:
    """A judgement that cannot be made, saying why."""
    return Judgement(why, "–", n, None)


# ---- (a) phase change --------------------------------------------------------------------------


def row_jumps(records: list[Record], feature: int = 1) -> dict[tuple[int, float], float]:
    """Per (seed, sparsity): the largest change of ``weighted_norm2[feature]`` between
    neighbouring importance values (rows with one importance value or an undefined one are left
    out)."""
    rows: dict[tuple[int, float], list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        c = r["config"]
        rows[c["seed"], c["sparsity"]].append((c["importance_decay"], r["weighted_norm2"][feature]))
    jumps = {}
    for key, cells in rows.items():
        values = [v for _, v in sorted(cells)]
        if len(values) > 1 and None not in values:  # None: a NaN in results.json
            jumps[key] = max(abs(b - a) for a, b in itertools.pairwise(values))
    return jumps


def judge_phase_change(results: dict[str, list[Record]], figures: dict[str, str]) -> Judgement:
    """(a): where the dense model's phase diagram jumps, the MoE's does not."""
    from scipy.stats import wilcoxon

    phase = [name for name, figure in figures.items() if figure == "phase"]
    dense = [n for n in phase if all(r["config"]["n_experts"] == 1 for r in results[n])]
    moe = [n for n in phase if all(r["config"]["n_experts"] > 1 for r in results[n])]
    if not dense or not moe:
        return untestable("needs a dense and an MoE sweep with figure = 'phase'")
    dense_jumps = row_jumps(results[dense[0]])
    moe_jumps = row_jumps(results[moe[0]])
    pairs = [(d, moe_jumps[k]) for k, d in dense_jumps.items() if d >= JUMP and k in moe_jumps]
    if len(pairs) < MIN_PHASE_PAIRS:
        return untestable(
            f"{len(pairs)} (density, seed) rows where the dense model jumps by ≥ {JUMP} "
            f"(needs {MIN_PHASE_PAIRS})",
            len(pairs),
        )
    dense_values = [d for d, _ in pairs]
    moe_values = [m for _, m in pairs]
    moe_median = statistics.median(moe_values)
    differences = [m - d for d, m in pairs]
    if all(x == 0 for x in differences):
        p = 1.0
    else:
        p = float(wilcoxon(moe_values, dense_values, alternative="less").pvalue)
    discontinuous = sum(m >= JUMP for m in moe_values)
    return Judgement(
        f"{dense[0]} vs {moe[0]}: in {len(pairs)} (density, seed) rows where the dense model "
        f"jumps (median {statistics.median(dense_values):.2f}), the MoE's largest step has "
        f"median {moe_median:.2f} (range {min(moe_values):.2f}–{max(moe_values):.2f}); "
        f"{discontinuous} of {len(pairs)} MoE rows also jump by ≥ {JUMP}",
        f"Wilcoxon signed-rank, MoE < dense, one-sided p = {p:.3g}",
        len(pairs),
        moe_median < JUMP,
        p,
    )


# ---- (b, c) network sparsity -------------------------------------------------------------------


def _network_records(
    results: dict[str, list[Record]], figures: dict[str, str]
) -> tuple[str, list[Record]] | None:
    names = [name for name, figure in figures.items() if figure == "network_sparsity"]
    if not names:
        return None
    return names[0], [r for r in results[names[0]] if r["config"]["n_experts"] > 1]


def judge_monosemantic_sparsity(
    results: dict[str, list[Record]], figures: dict[str, str]
) -> Judgement:
    """(c): smaller k/E, more monosemantic (dedicated) features; Spearman over MoE models."""
    from scipy.stats import spearmanr

    found = _network_records(results, figures)
    if found is None:
        return untestable("needs a sweep with figure = 'network_sparsity'")
    name, records = found
    known = [r for r in records if r["specialisation"] is not None]
    if len(known) < MIN_SPEARMAN_MODELS:
        return untestable(
            f"{len(known)} MoE models with a defined specialisation (needs {MIN_SPEARMAN_MODELS})",
            len(known),
        )
    x = [r["k_over_E"] for r in known]
    y = [r["specialisation"] for r in known]
    hidden = [r["monosemantic_fraction"] for r in known if r["monosemantic_fraction"] is not None]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return untestable(
            f"{name}: Spearman's ρ is undefined (k/E takes {len(set(x))} value(s), "
            f"specialisation {len(set(y))})",
            len(known),
        )
    rho, p = spearmanr(x, y, alternative="less")
    if math.isnan(rho) or math.isnan(p):
        return untestable(f"{name}: Spearman's ρ is undefined", len(known))
    return Judgement(
        f"{name}: {len(known)} MoE models, k/E {min(x):.3g}–{max(x):.3g}; dedicated share of "
        f"represented features {min(y):.3f}–{max(y):.3f}; hidden-dimension monosemantic "
        f"fraction {_span(hidden)}",
        f"Spearman ρ(k/E, dedicated share) = {rho:.3f}, one-sided (ρ < 0) p = {p:.3g}",
        len(known),
        bool(rho < 0),
        float(p),
    )


def judge_sparsity_characterises(
    results: dict[str, list[Record]], figures: dict[str, str]
) -> Judgement:
    """(b): at equal k/E, models with different E are alike (within the equivalence margin)."""
    found = _network_records(results, figures)
    if found is None:
        return untestable("needs a sweep with figure = 'network_sparsity'")
    name, records = found
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in records:
        if r["specialisation"] is not None:
            cells[r["config"]["n_experts"], r["config"]["k"]].append(r["specialisation"])
    by_ratio: dict[float, dict[int, float]] = defaultdict(dict)
    for (E, k), values in cells.items():
        if len(values) >= MIN_SEEDS:
            by_ratio[round(k / E, 9)][E] = statistics.fmean(values)
    shared = {ratio: means for ratio, means in by_ratio.items() if len(means) >= 2}
    n = sum(len(cells[E, round(ratio * E)]) for ratio, means in shared.items() for E in means)
    if not shared:
        return untestable(
            f"{name}: no k/E reached by two expert counts with ≥ {MIN_SEEDS} seeds each", n
        )
    spreads = {ratio: max(m.values()) - min(m.values()) for ratio, m in shared.items()}
    worst = max(spreads, key=lambda ratio: spreads[ratio])
    parts = [
        f"k/E {ratio:.3g}: " + ", ".join(f"E={E} {mean:.3f}" for E, mean in sorted(m.items()))
        for ratio, m in sorted(shared.items())
    ]
    return Judgement(
        f"{name}: mean dedicated share per E at equal k/E — " + "; ".join(parts),
        f"largest spread at equal k/E = {spreads[worst]:.3f} (k/E {worst:.3g})",
        n,
        spreads[worst] <= EQUIVALENCE_MARGIN,
    )


# ---- (d) initialisation ------------------------------------------------------------------------


def group_coverage(record: Record) -> float | None:
    """How fully the model's used experts divide the feature groups among themselves, in [0, 1].

    Each used expert (usage ≥ ``USED_EXPERT``) leads the group holding the largest share of its
    Σ_i ‖W_i‖² (its focus); each group scores the highest focus among the experts it leads (0 if
    none); the coverage is the mean over groups. One expert per group, each wholly on its group,
    gives 1; a single used expert wholly on one group 1/G; experts spread evenly over all G
    groups 1/G². None when no expert is used or represents anything.
    """
    size = record["config"]["group_size"]
    n = record["config"]["n_features"]
    groups = math.ceil(n / size)
    best = [0.0] * groups
    seen = False
    for usage, norms in zip(record["usage"], record["feature_norm"], strict=True):
        weight = [v * v for v in norms]
        total = sum(weight)
        if usage < USED_EXPERT or total <= 0:
            continue
        seen = True
        per_group = [sum(weight[g * size : (g + 1) * size]) for g in range(groups)]
        lead = max(range(groups), key=lambda g: per_group[g])
        best[lead] = max(best[lead], per_group[lead] / total)
    return statistics.fmean(best) if seen else None


def judge_init_specialises(results: dict[str, list[Record]], figures: dict[str, str]) -> Judgement:
    """(d): aligned-initialised experts cover the correlated feature groups more than random."""
    from scipy.stats import PermutationMethod, mannwhitneyu

    names = [name for name, figure in figures.items() if figure == "init"]
    if not names:
        return untestable("needs a sweep with figure = 'init'")
    name = names[0]
    scores: dict[str, list[float]] = defaultdict(list)
    dedicated: dict[str, list[float]] = defaultdict(list)
    for r in results[name]:
        if r["config"]["correlation"] != "correlated" or r["config"]["n_experts"] < 2:
            continue
        score = group_coverage(r)
        if score is not None:
            scores[r["config"]["init"]].append(score)
            if r["specialisation"] is not None:
                dedicated[r["config"]["init"]].append(r["specialisation"])
    aligned, random = scores["aligned"], scores["random"]
    n = len(aligned) + len(random)
    if min(len(aligned), len(random)) < MIN_INIT_MODELS:
        return untestable(
            f"{name}: {len(aligned)} aligned and {len(random)} random MoE models with "
            f"correlated groups (needs {MIN_INIT_MODELS} each)",
            n,
        )
    if len(set(aligned + random)) < 2:
        p = 1.0
    elif math.comb(n, len(aligned)) <= EXACT_PERMUTATIONS:  # exact, ties included
        method = PermutationMethod(n_resamples=math.inf)
        p = float(mannwhitneyu(aligned, random, alternative="greater", method=method).pvalue)
    else:
        p = float(mannwhitneyu(aligned, random, alternative="greater").pvalue)
    median_a, median_r = statistics.median(aligned), statistics.median(random)
    return Judgement(
        f"{name}: group coverage aligned {median_a:.3f} (median of {len(aligned)}, "
        f"{_span(aligned)}) vs random {median_r:.3f} ({len(random)}, {_span(random)}); "
        f"dedicated share aligned {_span(dedicated['aligned'])}, random "
        f"{_span(dedicated['random'])}",
        f"Mann–Whitney U, aligned > random, one-sided p = {p:.3g}",
        n,
        median_a > median_r,
        p,
    )


# ---- the registry and the verdicts -------------------------------------------------------------


@dataclass(frozen=True)
class ClaimSpec:
    """A claim of the seed study and how a toy run judges it."""

    statement: str
    criterion: str
    judge: Judge


CLAIMS: dict[str, ClaimSpec] = {
    "no_phase_change": ClaimSpec(
        "(a) MoEs show no discontinuous phase change where dense toy models do",
        f"over the (density, seed) rows of the phase sweeps where the dense model's ‖W_2‖² jumps "
        f"by ≥ {JUMP} between neighbouring importances (≥ {MIN_PHASE_PAIRS} rows), the MoE's "
        f"largest step has median < {JUMP} and is smaller than the dense model's (Wilcoxon "
        f"signed-rank, one-sided, Holm p < {ALPHA})",
        judge_phase_change,
    ),
    "network_sparsity_characterises": ClaimSpec(
        "(b) network sparsity k/E characterises MoEs",
        f"at every k/E reached by ≥ 2 expert counts (≥ {MIN_SEEDS} seeds each), the mean "
        f"dedicated share differs by ≤ {EQUIVALENCE_MARGIN} between expert counts (an "
        "equivalence margin, no p-value)",
        judge_sparsity_characterises,
    ),
    "network_sparsity_monosemantic": ClaimSpec(
        "(c) more network sparsity (smaller k/E) gives more monosemantic representations",
        f"over the network-sparsity sweep's MoE models (≥ {MIN_SPEARMAN_MODELS}), Spearman ρ "
        f"between k/E and the dedicated share of represented features (D_i ≥ 0.9, basis-free) "
        f"is negative, one-sided Holm p < {ALPHA}",
        judge_monosemantic_sparsity,
    ),
    "aligned_init_specialises": ClaimSpec(
        "(d) experts specialise around coherent feature combinations when initialised "
        "appropriately",
        f"in the init sweep (correlated groups), the group coverage of router-aligned models "
        f"exceeds that of random ones (≥ {MIN_INIT_MODELS} models each; Mann–Whitney U, "
        f"one-sided, Holm p < {ALPHA})",
        judge_init_specialises,
    ),
}
"""Every toy claim a config may list, by name, in the order the seed study states them."""


def judge_claims(
    names: Sequence[str], results: dict[str, list[Record]], figures: dict[str, str]
) -> list[ToyVerdict]:
    """The verdict of every named claim from the sweeps' records (``figures``: sweep → figure)."""
    judged = {name: CLAIMS[name].judge(results, figures) for name in names}
    tested = [n for n, j in judged.items() if j.criterion_met is not None and j.p_value is not None]
    adjusted = dict(zip(tested, holm([judged[n].p_value for n in tested]), strict=True))
    verdicts = []
    for name, j in judged.items():
        p_adj = adjusted.get(name)
        if j.criterion_met is None:
            verdict = UNTESTABLE
        elif j.criterion_met and (p_adj is None or p_adj < ALPHA):
            verdict = HOLDS
        else:
            verdict = FAILS
        spec = CLAIMS[name]
        verdict_ = ToyVerdict(
            name, spec.statement, spec.criterion, j.measured, j.statistic, j.n, j.p_value, p_adj,
            verdict,
        )  # fmt: skip
        verdicts.append(verdict_)
    return verdicts


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}" if values else "–"
