"""Per-expert rows: experts ranked by usage within each model, then averaged over seeds."""

from __future__ import annotations

import pytest

from crossdiff.toy.aggregate import per_expert_rows


def record(seed: int, usage: list[float], dedicated: list[float]) -> dict:
    E = len(usage)
    return {  # keys sorted, as in a results.json read back
        "config": {"k": 1, "n_experts": E, "n_features": 3, "seed": seed, "sparsity": 0.5},
        "usage": usage,
        "expert_dimensionality": [1.0] * E,
        "feature_states": [[1, 2, 0]] * E,  # dedicated, superposed, ignored
        "superposition": [[0.0, 0.5, 9.0]] * E,  # the ignored feature's value is left out
        "specialisation_per_expert": dedicated,
        "monosemantic_fraction_per_expert": [None] * E,
    }


def test_experts_are_ranked_by_usage_in_each_model_then_averaged_over_seeds() -> None:
    records = [
        record(0, [0.25, 0.75], [0.0, 1.0]),  # the busiest is expert 1 here ...
        record(1, [0.65, 0.35], [0.5, 0.0]),  # ... and expert 0 here
        record(0, [1.0], [0.2]),
        record(1, [1.0], [0.4]),
    ]
    rows = per_expert_rows(records)
    assert [(row["setting"], row["rank"]) for row in rows] == [
        ("n_experts=2", 0), ("n_experts=2", 1), ("n_experts=1", 0),
    ]  # fmt: skip
    busiest, quietest, dense = rows
    assert busiest["usage"] == pytest.approx(0.7) and busiest["specialisation"] == 0.75
    assert quietest["usage"] == pytest.approx(0.3) and quietest["specialisation"] == 0.0
    assert dense["specialisation"] == pytest.approx(0.3) and dense["models"] == 2
    assert busiest["superposition"] == pytest.approx(0.25)  # mean over represented features
    assert busiest["represented"] == 2.0
    assert busiest["monosemantic_fraction"] is None  # undefined everywhere: shown as a dash
