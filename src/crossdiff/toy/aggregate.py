"""Sweep records reduced to the numbers the report quotes: phase grids, k/E and init tables."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from crossdiff.toy.config import ToyConfig

Record = dict[str, Any]
PHASE_FEATURE = 1
"""The phase diagram follows the second feature (the one whose relative importance varies)."""


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def phase_state(record: Record, feature: int = PHASE_FEATURE) -> int:
    """The feature's state in a model: its experts' states, each weighted by the routing weight
    the expert gets on samples where the feature is present."""
    votes: Counter[int] = Counter()
    for usage, states in zip(record["feature_usage"], record["feature_states"], strict=True):
        votes[states[feature]] += usage[feature]
    return max(sorted(votes), key=lambda state: votes[state])


def phase_grid(records: list[Record], feature: int = PHASE_FEATURE) -> dict[str, Any]:
    """Over sparsity × importance_decay: the feature's state, D_i and ‖W_i‖² in each cell.

    Each cell shows its lowest-loss seed (gradient descent sometimes stops in a local minimum,
    e.g. a same-sign pair instead of an antipodal one; Elhage et al. also keep the best of several
    runs). D_i and ‖W_i‖² are weighted by ``feature_usage``. ``max_jump``: per sparsity, the
    largest change of that ‖W_i‖² between neighbouring importance values (a phase change shows as
    a jump of about 1); ``seeds_agree``: the share of cells where every seed has the best's state.
    """
    sparsities = sorted({r["config"]["sparsity"] for r in records})
    decays = sorted({r["config"]["importance_decay"] for r in records})
    cells: dict[tuple[float, float], list[Record]] = defaultdict(list)
    for r in records:
        cells[r["config"]["sparsity"], r["config"]["importance_decay"]].append(r)
    state, dimensionality, norm2 = [], [], []
    agree = 0
    for s in sparsities:
        state.append([]), dimensionality.append([]), norm2.append([])
        for d in decays:
            cell = cells[s, d]
            best = min(cell, key=lambda r: r["loss"])
            state[-1].append(phase_state(best, feature))
            agree += all(phase_state(r, feature) == state[-1][-1] for r in cell)
            dimensionality[-1].append(best["weighted_dimensionality"][feature] or 0.0)
            norm2[-1].append(best["weighted_norm2"][feature])
    jumps = [max((abs(b - a) for a, b in itertools.pairwise(row)), default=0.0) for row in norm2]
    return {
        "sparsity": sparsities,
        "importance_decay": decays,
        "state": state,
        "dimensionality": dimensionality,
        "norm2": norm2,
        "max_jump": jumps,
        "seeds_agree": agree / (len(sparsities) * len(decays)),
    }


def grouped(
    records: list[Record], key: Callable[[Record], Any], metrics: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Mean and standard deviation over the records sharing ``key`` (seeds, typically)."""
    groups: dict[Any, list[Record]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    rows = []
    for name in sorted(groups, key=str):
        row: dict[str, Any] = {"key": name, "models": len(groups[name])}
        for metric in metrics:
            mean, std = _mean_std([r[metric] for r in groups[name]])
            row[metric] = mean
            row[f"{metric}_std"] = std
        rows.append(row)
    return rows


NETWORK_METRICS = ("monosemantic_fraction", "specialisation", "router_uniformity", "loss")


def network_sparsity_table(records: list[Record]) -> list[dict[str, Any]]:
    """Rows per (E, k): k/E and the mean ± std over seeds of the network metrics."""
    rows = grouped(records, lambda r: (r["config"]["n_experts"], r["config"]["k"]), NETWORK_METRICS)
    for row in rows:
        E, k = row.pop("key")
        row.update(n_experts=E, k=k, k_over_E=k / E)
    return sorted(rows, key=lambda row: (row["k_over_E"], row["n_experts"]))


def init_table(records: list[Record]) -> list[dict[str, Any]]:
    """Rows per (init, load_balance, renormalised): mean ± std over seeds of the network metrics
    and of the group coverage (``crossdiff.toy.claims.group_coverage``)."""

    def key(r: Record) -> tuple[str, float, bool]:
        c = r["config"]
        return c["init"], c["load_balance"], r["renormalised"]

    from crossdiff.toy.claims import group_coverage

    covered = [{**r, "group_coverage": group_coverage(r)} for r in records]
    rows = grouped(covered, key, (*NETWORK_METRICS, "group_coverage"))
    for row in rows:
        init, balance, renormalised = row.pop("key")
        row.update(init=init, load_balance=balance, renormalised=renormalised)
    return rows


def showcase(records: list[Record]) -> Record:
    """The model a sweep's stick plots and heatmaps show: sparsest, most experts, first seed."""
    return max(
        records,
        key=lambda r: (r["config"]["sparsity"], r["config"]["n_experts"], -r["config"]["seed"]),
    )


PER_EXPERT_GROUPS = 12
"""A sweep with more settings than this shows per-expert numbers for its showcase setting only."""


def _expert_values(record: Record, e: int) -> dict[str, float | None]:
    """One expert's numbers: usage, D*, mean superposition of its represented features, the
    represented count, the dedicated share and the hidden-dimension monosemantic fraction."""
    states = record["feature_states"][e]
    represented = [i for i, state in enumerate(states) if state != 0]
    superposition = [record["superposition"][e][i] for i in represented]
    return {
        "usage": record["usage"][e],
        "expert_dimensionality": record["expert_dimensionality"][e],
        "superposition": statistics.fmean(superposition) if superposition else None,
        "represented": float(len(represented)),
        "specialisation": record["specialisation_per_expert"][e],
        "monosemantic_fraction": record["monosemantic_fraction_per_expert"][e],
    }


EXPERT_METRICS = (
    "usage", "expert_dimensionality", "superposition", "represented", "specialisation",
    "monosemantic_fraction",
)  # fmt: skip


def setting_label(config: dict[str, Any], varied: list[str]) -> str:
    """The settings a sweep varies (but the seed), as ``name=value`` text."""
    return ", ".join(f"{name}={config[name]}" for name in varied) or "all models"


def _by_usage(record: Record) -> list[int]:
    """The model's experts, busiest first."""
    return sorted(range(len(record["usage"])), key=lambda e: -record["usage"][e])


def per_expert_rows(records: list[Record]) -> list[dict[str, Any]]:
    """Per setting (every swept value but the seed) and expert rank by usage (0: busiest):
    the mean over seeds of each expert's numbers (:data:`EXPERT_METRICS`).

    Experts are ranked within each model, since expert numbers are arbitrary labels. A sweep
    with more than ``PER_EXPERT_GROUPS`` settings shows its showcase model's setting only.
    """
    varied = [  # in ToyConfig's order (a reloaded results.json has its keys sorted)
        field.name
        for field in dataclasses.fields(ToyConfig)
        if field.name != "seed" and len({str(r["config"].get(field.name)) for r in records}) > 1
    ]
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[setting_label(r["config"], varied)].append(r)
    if len(groups) > PER_EXPERT_GROUPS:
        shown = setting_label(showcase(records)["config"], varied)
        groups = {shown: groups[shown]}
    rows = []
    for label, members in groups.items():
        ranked = [[_expert_values(r, e) for e in _by_usage(r)] for r in members]
        for rank in range(max(len(experts) for experts in ranked)):
            values = [experts[rank] for experts in ranked if rank < len(experts)]
            row: dict[str, Any] = {"setting": label, "rank": rank, "models": len(values)}
            for metric in EXPERT_METRICS:
                row[metric], row[f"{metric}_std"] = _mean_std([v[metric] for v in values])
            rows.append(row)
    return rows
