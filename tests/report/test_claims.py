"""Claims judged from hand-built summaries whose verdicts are known."""

from __future__ import annotations

from typing import Any

from scipy.stats import binomtest

from crossdiff.report.claims import run_claims


def summary(dense_only: int, moe_only: int, tests: dict[str, Any]) -> dict[str, Any]:
    return {
        "models": {"d": {"arch": "dense"}, "m": {"arch": "moe"}},
        "features": {"counts": {"shared": 100, "d_only": dense_only, "m_only": moe_only}},
        "density": {"median": {"shared": 0.01, "d_only": 0.04, "m_only": 0.03}, "tests": tests},
    }


def verdicts(data: dict[str, Any]) -> list[bool | None]:
    return [claim.holds for claim in run_claims(data)]


def test_feature_claims_follow_the_counts_and_tests() -> None:
    tests = {
        "m_only_vs_shared": {"effect_size": 0.8, "p_value": 1e-8},
        "d_only_vs_shared": {"effect_size": 0.86, "p_value": 1e-27},
    }
    claims = run_claims(summary(54, 17, tests))
    assert [c.holds for c in claims] == [True, True, False]  # the quickstart's pattern
    p = binomtest(17, 71, 0.5, alternative="less").pvalue
    assert f"p = {p:.2g}" in claims[0].statistic and "3.2× fewer" in claims[0].statistic
    assert "rank-biserial +0.80" in claims[1].statistic


def test_a_small_difference_in_counts_is_not_enough() -> None:
    # 9 vs 11 exclusive latents: fewer, but a binomial test cannot tell them apart
    assert verdicts(summary(11, 9, {}))[0] is False
    assert binomtest(9, 20, 0.5, alternative="less").pvalue > 0.05


def test_untestable_and_opposite_density_claims() -> None:
    tests = {
        "m_only_vs_shared": {"effect_size": None, "p_value": None},
        "d_only_vs_shared": {"effect_size": -0.5, "p_value": 0.001},
    }
    assert verdicts(summary(5, 0, tests)) == [True, None, True]


def test_moe_claims_from_the_moe_summary() -> None:
    data = {
        "models": {},
        "moe": {
            "early_decoding": {
                "m": {
                    "cosine": {"0": {"1": {"contribution": 0.8, "hidden": 0.95}},
                               "1": {"1": {"contribution": 0.9, "hidden": 0.89}}},
                    "perplexity_increase": {"code": {"1": 0.05, "2": 0.0}},
                }
            },
            "routing": {
                "m": {"0": {"uniform_share": 0.25, "all": {"top_share": 0.9},
                            "code": {"top_share": 0.5}, "prose": {"top_share": 0.3}}}
            },
            "routing_similarity": {
                "cross_model": {},
                "m": {
                    "0": {"spearman_within": 0.3, "sequence_spearman": 0.6},
                    "3": {"spearman_within": -0.1, "sequence_spearman": 0.5, "ratio": 2.0,
                          "overlap_across": 0.5, "shuffled_baseline": 0.25,
                          "prompt_own_continuation": 0.7, "prompt_other_continuations": 0.6},
                },
            },
        },
    }  # fmt: skip
    claims = run_claims(data)
    # hidden cosine 0.89 < 0.9 in layer 1; +5% < 10%; median ratio 2.0 (the "all" row ignored);
    # ρ -0.1 in layer 3; sequences all > 0; ratio 2 ≥ 1.5; own 0.7 > others 0.6
    assert [c.holds for c in claims] == [False, True, True, False, True, True, False]
    assert claims[0].statistic == "min cos(hidden) = 0.890"
    assert "layer 3" in claims[4 + 1].measured
