"""Toy claims on constructed sweep records: each must hold, must fail, or is not testable."""

from __future__ import annotations

import math

import pytest

from crossdiff.errors import ConfigError
from crossdiff.toy import claims
from crossdiff.toy.claims import (
    CLAIMS,
    FAILS,
    HOLDS,
    UNTESTABLE,
    ClaimSpec,
    Judgement,
    group_coverage,
    holm,
    judge_claims,
)
from crossdiff.toy.config import toy_run_config

IMPORTANCES = (0.1, 0.5, 1.0, 2.0, 10.0)
STEP = (0.0, 0.0, 0.0, 1.0, 1.0)
"""‖W_2‖² over importance with a discontinuous switch (a jump of 1)."""
RAMP = (0.0, 0.2, 0.4, 0.6, 0.8)
"""A gradual transition (largest step 0.2)."""


def phase_records(E: int, curve: tuple[float, ...], seeds=(0, 1), sparsities=(0, 0.5, 0.9)):
    return [
        {
            "config": {"n_experts": E, "seed": seed, "sparsity": s, "importance_decay": r},
            "weighted_norm2": [1.0, value],
        }
        for seed in seeds
        for s in sparsities
        for r, value in zip(IMPORTANCES, curve, strict=True)
    ]


PHASE = {"phase_dense": "phase", "phase_moe": "phase"}


def verdict(name: str, results: dict, figures: dict) -> claims.ToyVerdict:
    (only,) = judge_claims([name], results, figures)
    return only


def test_no_phase_change_holds_for_a_gradual_moe_and_fails_for_a_switching_one() -> None:
    dense = phase_records(1, STEP)
    holds = verdict(
        "no_phase_change", {"phase_dense": dense, "phase_moe": phase_records(2, RAMP)}, PHASE
    )
    assert holds.verdict == HOLDS and holds.n == 6 and holds.p_value < 0.05
    same = verdict(
        "no_phase_change", {"phase_dense": dense, "phase_moe": phase_records(2, STEP)}, PHASE
    )
    assert same.verdict == FAILS and same.p_value == 1.0
    # softer than dense (0.6 < 1) but still a jump ≥ 0.5: significant, yet the criterion fails
    softer = (0.0, 0.0, 0.0, 0.6, 1.0)
    partly = verdict(
        "no_phase_change", {"phase_dense": dense, "phase_moe": phase_records(2, softer)}, PHASE
    )
    assert partly.p_value < 0.05 and partly.verdict == FAILS


def test_no_phase_change_is_not_testable_with_few_rows_or_no_moe_sweep() -> None:
    few = {
        "phase_dense": phase_records(1, STEP, seeds=(0,)),
        "phase_moe": phase_records(2, RAMP, seeds=(0,)),
    }
    assert verdict("no_phase_change", few, PHASE).verdict == UNTESTABLE  # 3 rows < 6
    undefined = phase_records(2, RAMP)
    for r in undefined:
        r["weighted_norm2"][1] = None  # NaN, as results.json stores it
    result = verdict(
        "no_phase_change", {"phase_dense": phase_records(1, STEP), "phase_moe": undefined}, PHASE
    )
    assert result.verdict == UNTESTABLE and result.n == 0
    alone = {"phase_dense": phase_records(1, STEP)}
    result = verdict("no_phase_change", alone, {"phase_dense": "phase"})
    assert result.verdict == UNTESTABLE and "MoE sweep" in result.measured


EXPERTS = [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 4), (8, 8)]


def network_records(specialisation, seeds=(0, 1, 2)) -> list[dict]:
    """Records whose dedicated share is ``specialisation(E, k, seed)``."""
    return [
        {
            "config": {"n_experts": E, "k": k, "seed": seed},
            "k_over_E": k / E,
            "specialisation": specialisation(E, k, seed),
            "monosemantic_fraction": 0.0,
        }
        for E, k in EXPERTS
        for seed in seeds
    ]


NETWORK = {"network": "network_sparsity"}


def test_monosemanticity_claim_holds_when_sparser_networks_are_more_dedicated() -> None:
    def sparser_better(E, k, seed):
        return 1 - k / E + 0.01 * seed

    result = verdict(
        "network_sparsity_monosemantic", {"network": network_records(sparser_better)}, NETWORK
    )
    assert (
        result.verdict == HOLDS
        and result.n == 27
        and "ρ(k/E, dedicated share) = -" in (result.statistic)
    )
    reversed_ = verdict(
        "network_sparsity_monosemantic",
        {"network": network_records(lambda E, k, seed: k / E + 0.01 * seed)},
        NETWORK,
    )
    assert reversed_.verdict == FAILS and reversed_.p_value > 0.5


def test_monosemanticity_claim_is_not_testable_when_rho_is_undefined_or_models_are_few() -> None:
    constant = verdict(
        "network_sparsity_monosemantic",
        {"network": network_records(lambda E, k, seed: 0.0)},
        NETWORK,
    )
    assert constant.verdict == UNTESTABLE and "undefined" in constant.measured
    undefined = verdict(
        "network_sparsity_monosemantic",
        {"network": network_records(lambda E, k, seed: None)},
        NETWORK,
    )
    assert undefined.verdict == UNTESTABLE and undefined.n == 0
    assert verdict("network_sparsity_monosemantic", {}, {}).verdict == UNTESTABLE


def test_k_over_e_characterises_when_equal_ratios_agree_and_not_when_k_decides() -> None:
    by_ratio = verdict(
        "network_sparsity_characterises",
        {"network": network_records(lambda E, k, seed: k / E + 0.01 * seed)},
        NETWORK,
    )
    assert by_ratio.verdict == HOLDS and by_ratio.p_value is None
    by_k = verdict(  # at k/E = 1: E=2 → 0.4, E=4 → 0.8, E=8 → 1.6
        "network_sparsity_characterises",
        {"network": network_records(lambda E, k, seed: 0.2 * k)},
        NETWORK,
    )
    assert by_k.verdict == FAILS and "largest spread at equal k/E = 1.200" in by_k.statistic
    one_seed = verdict(
        "network_sparsity_characterises",
        {"network": network_records(lambda E, k, seed: k / E, seeds=(0,))},
        NETWORK,
    )
    assert one_seed.verdict == UNTESTABLE


def init_record(init: str, seed: int, focused: bool) -> dict:
    """E = 4 experts over 4 groups of 2 features: each on its own group, or all on every group."""
    norms = [[1.0 if (i // 2 == e or not focused) else 0.0 for i in range(8)] for e in range(4)]
    return {
        "config": {
            "init": init, "seed": seed, "correlation": "correlated", "n_experts": 4,
            "n_features": 8, "group_size": 2,
        },
        "usage": [0.25] * 4,
        "feature_norm": norms,
        "specialisation": 0.0,
    }  # fmt: skip


def test_group_coverage_in_closed_form() -> None:
    assert group_coverage(init_record("aligned", 0, focused=True)) == 1.0
    spread = group_coverage(init_record("random", 0, focused=False))
    assert spread == pytest.approx(1 / 16)  # one group led, by an expert with 1/4 of its weight
    collapsed = init_record("random", 0, focused=True)
    collapsed["usage"] = [1.0, 0.0, 0.0, 0.0]  # one expert used, wholly on one group
    assert group_coverage(collapsed) == pytest.approx(1 / 4)
    collapsed["usage"] = [0.0] * 4
    assert group_coverage(collapsed) is None


INIT = {"init": "init"}


def test_aligned_init_claim_holds_when_aligned_experts_cover_groups_and_fails_otherwise() -> None:
    aligned = [init_record("aligned", s, True) for s in range(4)]
    random = [init_record("random", s, False) for s in range(4)]
    holds = verdict("aligned_init_specialises", {"init": aligned + random}, INIT)
    assert holds.verdict == HOLDS and holds.p_value == pytest.approx(1 / 70)
    same = [init_record("random", s, True) for s in range(4)]
    fails = verdict("aligned_init_specialises", {"init": aligned + same}, INIT)
    assert fails.verdict == FAILS and fails.p_value == 1.0
    few = verdict("aligned_init_specialises", {"init": aligned[:3] + random}, INIT)
    assert few.verdict == UNTESTABLE and "needs 4 each" in few.measured


def test_holm_adjusts_in_the_order_of_the_p_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def fixed(p: float | None, met: bool | None) -> ClaimSpec:
    return ClaimSpec("s", "c", lambda results, figures: Judgement("m", "t", 10, met, p))


def test_claims_that_hold_alone_can_fail_after_holm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CLAIMS, "first", fixed(0.03, True))
    monkeypatch.setitem(CLAIMS, "second", fixed(0.04, True))
    monkeypatch.setitem(CLAIMS, "untestable", fixed(None, None))
    assert [v.verdict for v in judge_claims(["first"], {}, {})] == [HOLDS]
    both = judge_claims(["first", "second", "untestable"], {}, {})
    assert [v.verdict for v in both] == [FAILS, FAILS, UNTESTABLE]
    assert [v.p_adjusted for v in both[:2]] == pytest.approx([0.06, 0.06])  # m = 2, not 3
    assert both[2].p_adjusted is None


def test_every_claim_on_an_empty_run_is_not_testable_not_a_crash() -> None:
    verdicts = judge_claims(list(CLAIMS), {}, {})
    assert [v.verdict for v in verdicts] == [UNTESTABLE] * len(CLAIMS)
    assert all(isinstance(v.as_dict()["measured"], str) for v in verdicts)
    assert not any(isinstance(v.p_value, float) and math.isnan(v.p_value) for v in verdicts)


def test_a_config_names_only_known_claims() -> None:
    with pytest.raises(ConfigError, match=r"unknown toy claim 'no_phase_chnage' \(did you mean"):
        toy_run_config({"claims": ["no_phase_chnage"], "sweeps": {"a": {}}})
    with pytest.raises(ConfigError, match="twice"):
        toy_run_config({"claims": ["no_phase_change"] * 2, "sweeps": {"a": {}}})
    config = toy_run_config({"claims": ["no_phase_change"], "sweeps": {"a": {}}})
    assert config.claims == ("no_phase_change",)
